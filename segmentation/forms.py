"""HTML forms. Validation of the photo itself lives in ``uploads.py``, shared with the API."""

from django import forms
from django.conf import settings
from django.contrib.auth.forms import AdminUserCreationForm, UserCreationForm

from .accounts import username_taken
from .health import model_statuses
from .inference import InferenceError
from .inference.registry import AUTO
from .inference.runtime import requested_precision
from .models import Webhook


def model_choices() -> list[tuple[str, str]]:
    """Only models that can run on this server are offered (``unavailable_models`` says why
    the others are not)."""
    usable = [(m.name, m.description) for m in model_statuses() if m.usable]
    return [(AUTO, "Automatic (best available)"), *usable] if usable else []


def unavailable_models() -> list[tuple[str, str]]:
    return [(m.name, m.reason) for m in model_statuses() if not m.usable]


class UploadForm(forms.Form):
    """The options of an upload. The photos (``images``, one or many) are not a form field:
    each is checked by ``uploads.validate_upload``, so that each gets its own error."""

    score_threshold = forms.FloatField(
        min_value=0.0,
        max_value=1.0,
        label="Minimum score",
        help_text="Detections scoring below this are not reported.",
        widget=forms.NumberInput(attrs={"step": "0.05"}),
    )
    model = forms.ChoiceField(label="Model")
    precision = forms.ChoiceField(
        label="Precision",
        required=False,
        choices=[("fp32", "FP32 (exact)"), ("int8", "INT8 (faster, slightly different)")],
        help_text="INT8 runs faster on a CPU and finds nearly the same instances.",
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["model"].choices = model_choices()
        self.fields["score_threshold"].initial = settings.SEGWEB["DEFAULT_THRESHOLD"]
        self.fields["model"].initial = AUTO
        if settings.SEGWEB["PRECISION_PER_JOB"]:
            try:
                self.fields["precision"].initial = requested_precision()
            except InferenceError:  # a bad SEGWEB_PRECISION: job_create says so on submit
                self.fields["precision"].initial = "fp32"
        else:  # only offered where the server lets jobs choose
            del self.fields["precision"]


class CasefoldUniqueUsername:
    """A new user's name must differ from every other by more than case. Django's own check
    compares with ``username__iexact``, which SQLite applies to ASCII only: "Émile" and
    "émile" both got in. Names are compared casefolded (``accounts.username_key``)."""

    def clean_username(self) -> str:
        username = super().clean_username()
        if username and not self.has_error("username") and username_taken(username):
            raise forms.ValidationError(
                "A user with that username already exists (names differing only in case "
                "are the same name).",
                code="unique",
            )
        return username


class SignupForm(CasefoldUniqueUsername, UserCreationForm):
    email = forms.EmailField(required=False, help_text="Optional.")

    class Meta(UserCreationForm.Meta):
        fields = ("username", "email")


class AdminUserAddForm(CasefoldUniqueUsername, AdminUserCreationForm):
    """The admin's "Add user", with the same rule as sign-up."""


class WebhookForm(forms.Form):
    """A new webhook; the URL itself is checked by ``services.webhook_create``."""

    url = forms.CharField(
        label="URL",
        max_length=2000,
        help_text="http(s) on a public address; segweb POSTs a signed JSON body to it.",
        widget=forms.URLInput(attrs={"placeholder": "https://example.com/segweb-hook"}),
    )
    events = forms.MultipleChoiceField(
        choices=Webhook.Event.choices,
        initial=[Webhook.Event.JOB_FINISHED, Webhook.Event.COLLECTION_FINISHED],
        widget=forms.CheckboxSelectMultiple,
    )
