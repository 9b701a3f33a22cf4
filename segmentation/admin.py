"""Moderation in the Django admin. Every action calls a service; nothing writes here directly.

What a staff account may do follows its model permissions, as everywhere else
(``models.ACTION_PERMISSIONS``): seeing jobs needs "view job", hiding, showing again and
re-running "change job", deleting "delete job"; deactivating users "change user". Being staff
only opens the admin's door.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.db.models import QuerySet
from django.shortcuts import render
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from . import services
from .forms import AdminUserAddForm
from .models import Detection, Job, may_on_everyones


class LabelFilter(admin.SimpleListFilter):
    title = "detected class"
    parameter_name = "label"

    def lookups(self, request, model_admin):
        labels = Detection.objects.values_list("label", flat=True).distinct().order_by("label")
        return [(label, label) for label in labels]

    def queryset(self, request, queryset):
        return queryset.with_label(self.value()) if self.value() else queryset


class DetectionInline(admin.TabularInline):
    model = Detection
    fields = ("rank", "label", "score", "x1", "y1", "x2", "y2", "area")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class HideForm(forms.Form):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text="Kept with the job for the record.",
    )


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("thumbnail_tag", "original_filename", "owner", "status", "classes", "model",
                    "hidden", "created_at", "finished_at")  # fmt: skip
    list_display_links = ("thumbnail_tag", "original_filename")
    list_filter = (
        "status",
        "model",
        LabelFilter,
        "hidden",
        ("created_at", admin.DateFieldListFilter),
    )
    search_fields = ("owner__username", "owner__email", "original_filename")
    date_hierarchy = "created_at"
    list_select_related = ("owner",)
    list_per_page = 50
    inlines = [DetectionInline]
    actions = ["hide_jobs", "unhide_jobs", "rerun_jobs", "delete_jobs"]
    readonly_fields = (
        "id", "owner", "status", "preview", "original_filename", "image_format", "image_bytes",
        "width", "height", "model", "runtime", "score_threshold", "created_at", "enqueued_at",
        "started_at", "finished_at", "heartbeat_at", "attempts", "worker", "inference_ms",
        "total_ms", "error", "hidden", "hidden_reason", "hidden_at", "hidden_by",
    )  # fmt: skip
    fields = readonly_fields

    class Media:
        css = {"all": ["segmentation/admin.css"]}  # the images' sizes: no inline style (CSP)

    def get_queryset(self, request):
        return Job.objects.for_user(request.user).prefetch_related("detections")

    def has_add_permission(self, request) -> bool:
        return False  # jobs come from uploads

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # moderation goes through the actions below

    def has_view_permission(self, request, obj=None) -> bool:
        return may_on_everyones(request.user, "view")

    def has_moderate_permission(self, request) -> bool:
        """Hide, show again, run again: the "change job" permission (the form stays read-only)."""
        return may_on_everyones(request.user, "change")

    def has_delete_permission(self, request, obj=None) -> bool:
        return may_on_everyones(request.user, "delete")

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # it would leave the files behind
        return actions

    def delete_model(self, request, obj: Job) -> None:
        services.job_delete(job=obj)

    def delete_queryset(self, request, queryset: QuerySet) -> None:
        for job in queryset:
            services.job_delete(job=job)

    @admin.display(description="")
    def thumbnail_tag(self, job: Job):
        if not job.thumbnail:
            return "—"
        url = reverse("job-file", args=[job.pk, "thumbnail"])
        return format_html('<img src="{}" alt="" class="segweb-thumb">', url)

    @admin.display(description="Preview")
    def preview(self, job: Job):
        links = (
            [("image", "photo"), ("overlay", "overlay")] if job.overlay else [("image", "photo")]
        )
        return format_html_join(
            " ",
            '<a href="{}"><img src="{}" alt="{}" class="segweb-preview"></a>',
            (
                (reverse("job-file", args=[job.pk, k]), reverse("job-file", args=[job.pk, k]), alt)
                for k, alt in links
            ),
        )

    @admin.display(description="Classes")
    def classes(self, job: Job) -> str:
        shown = {d.label for d in job.detections.all() if d.score >= job.score_threshold}
        return ", ".join(sorted(shown)) or "—"

    @admin.action(description="Hide from their owners…", permissions=["moderate"])
    def hide_jobs(self, request, queryset):
        if "apply" in request.POST:
            form = HideForm(request.POST)
            if form.is_valid():
                for job in queryset:
                    services.job_hide(job=job, by=request.user, reason=form.cleaned_data["reason"])
                self.message_user(request, f"{queryset.count()} job(s) hidden.", messages.SUCCESS)
                return None
        else:
            form = HideForm()
        return render(
            request,
            "admin/segmentation/hide_jobs.html",
            {
                **self.admin_site.each_context(request),
                "title": "Hide jobs from their owners",
                "jobs": queryset,
                "form": form,
                "action_checkbox_name": ACTION_CHECKBOX_NAME,
                "opts": self.model._meta,
            },
        )

    @admin.action(description="Show again to their owners", permissions=["moderate"])
    def unhide_jobs(self, request, queryset):
        for job in queryset:
            services.job_unhide(job=job)
        self.message_user(request, f"{queryset.count()} job(s) visible again.", messages.SUCCESS)

    @admin.action(description="Run again", permissions=["moderate"])
    def rerun_jobs(self, request, queryset):
        done, skipped = 0, 0
        for job in queryset:
            try:
                services.job_rerun(job=job)
                done += 1
            except services.IllegalTransition:
                skipped += 1
        self.message_user(request, f"{done} job(s) queued again.", messages.SUCCESS)
        if skipped:
            self.message_user(
                request, f"{skipped} job(s) skipped: still queued or running.", messages.WARNING
            )

    @admin.action(description="Delete, with their files", permissions=["delete"])
    def delete_jobs(self, request, queryset):
        count = 0
        for job in queryset:
            services.job_delete(job=job)
            count += 1
        self.message_user(request, f"{count} job(s) deleted with their files.", messages.SUCCESS)


User = get_user_model()
admin.site.unregister(User)


@admin.register(User)
class SegwebUserAdmin(UserAdmin):
    list_display = ("username", "email", "is_active", "is_staff", "job_count", "date_joined")
    actions = ["deactivate_users"]
    add_form = AdminUserAddForm  # usernames unique casefolded, as at sign-up

    def get_queryset(self, request):
        from django.db.models import Count

        return super().get_queryset(request).annotate(_job_count=Count("jobs"))

    def has_change_permission(self, request, obj=None) -> bool:
        # "Change user" is for moderating ordinary accounts: only a superuser changes a
        # superuser (their details, their password, deactivating them).
        if obj is not None and obj.is_superuser and not request.user.is_superuser:
            return False
        return super().has_change_permission(request, obj)

    def get_readonly_fields(self, request, obj=None):
        # Nor may "change user" grant powers: that is a superuser's decision.
        fields = super().get_readonly_fields(request, obj)
        if request.user.is_superuser:
            return fields
        return (*fields, "is_staff", "is_superuser", "groups", "user_permissions")

    @admin.display(description="Jobs", ordering="_job_count")
    def job_count(self, user) -> int:
        return user._job_count

    @admin.action(description="Deactivate (no sign-in, API tokens revoked)", permissions=["change"])
    def deactivate_users(self, request, queryset):
        done = 0
        for user in queryset:
            if user.pk == request.user.pk:
                self.message_user(request, "You cannot deactivate yourself.", messages.ERROR)
                continue
            if user.is_superuser and not request.user.is_superuser:
                # Otherwise "change user" would be a way to lock the superusers out.
                message = (
                    f"{user.get_username()} is a superuser: only a superuser may deactivate them."
                )
                self.message_user(request, message, messages.WARNING)
                continue
            services.user_deactivate(user=user)
            done += 1
        self.message_user(request, f"{done} user(s) deactivated.", messages.SUCCESS)


admin.site.site_header = "segweb moderation"
admin.site.site_title = "segweb admin"
