"""segweb settings: every deploy-time value comes from the environment (see .env.example).

Defaults run the whole product on one machine with nothing but Python: SQLite, local files and a
file-based Celery broker, all under ``$SEGWEB_DATA_DIR`` (default ``var/``). Setting
``DATABASE_URL``, ``CELERY_BROKER_URL`` and ``AWS_STORAGE_BUCKET_NAME`` moves each part to
PostgreSQL, Redis and S3 without touching code.
"""

from datetime import timedelta
from pathlib import Path

import environ
from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured
from kombu import Exchange, Queue

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env")  # optional; real environment variables win

DATA_DIR = Path(env.str("SEGWEB_DATA_DIR", default=str(BASE_DIR / "var"))).resolve()

# --- Security -------------------------------------------------------------------------------
DEBUG = env.bool("DJANGO_DEBUG", default=False)
_INSECURE_KEY = "insecure-development-key-do-not-use-in-production"
# `make run` generates a local key in the data directory; reading it here lets every command of
# that installation (`manage.py createsuperuser`...) start without exporting it.
_KEY_FILE = DATA_DIR / "secret_key"
SECRET_KEY = (
    env.str("DJANGO_SECRET_KEY", default="")
    or (_KEY_FILE.read_text().strip() if _KEY_FILE.is_file() else "")
    or (_INSECURE_KEY if DEBUG else "")
)
if not SECRET_KEY or (SECRET_KEY == _INSECURE_KEY and not DEBUG):
    raise ImproperlyConfigured(
        "DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is off "
        "(`make run` generates one under $SEGWEB_DATA_DIR)."
    )
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])
CSRF_FAILURE_VIEW = "segmentation.views.csrf_failure"  # Django's page has an inline style (CSP)
if env.bool("DJANGO_BEHIND_HTTPS_PROXY", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=True)
    SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=0)
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"

# --- Applications ---------------------------------------------------------------------------
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.humanize",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "knox",
    "axes",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "csp",
    "segmentation",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "segweb.middleware.PrivateCacheMiddleware",
    # Last, as django-axes asks: turns a locked-out sign-in into accounts.lockout_response.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "segweb.urls"
WSGI_APPLICATION = "segweb.wsgi.application"
ASGI_APPLICATION = "segweb.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "segmentation.context_processors.segweb",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
DATABASES = {
    "default": env.db_url("DATABASE_URL", default=f"sqlite:///{DATA_DIR / 'db.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # The web and worker processes write concurrently: WAL lets readers through, IMMEDIATE
    # transactions take the write lock up front instead of failing half-way with "locked".
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
else:
    DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("DATABASE_CONN_MAX_AGE", default=60))
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        # A database that does not answer fails a request (and /readyz) in seconds instead of
        # holding a gunicorn thread for the kernel's TCP timeout (minutes). A URL's own
        # ?connect_timeout= wins.
        DATABASES["default"].setdefault("OPTIONS", {}).setdefault("connect_timeout", 5)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache: per-user API throttling must be shared by every web process ------------------
CACHES = {
    "default": env.cache_url("CACHE_URL", default=f"filecache://{DATA_DIR / 'cache'}"),
}

# --- Files ----------------------------------------------------------------------------------
# Uploads and results are private: there is no MEDIA_URL route. Every image goes through a view
# that checks the viewer (local files) or a short-lived signed URL (S3).
MEDIA_ROOT = DATA_DIR / "media"
AWS_STORAGE_BUCKET_NAME = env.str("AWS_STORAGE_BUCKET_NAME", default="")
SIGNED_URL_SECONDS = env.int("SEGWEB_SIGNED_URL_SECONDS", default=300)
if AWS_STORAGE_BUCKET_NAME:
    from botocore.config import Config as S3ClientConfig

    _default_storage = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": AWS_STORAGE_BUCKET_NAME,
            "endpoint_url": env.str("AWS_S3_ENDPOINT_URL", default=None),
            "region_name": env.str("AWS_S3_REGION_NAME", default=None),
            "access_key": env.str("AWS_ACCESS_KEY_ID", default=None),
            "secret_key": env.str("AWS_SECRET_ACCESS_KEY", default=None),
            # With a client_config, django-storages ignores its own addressing_style and
            # signature_version options: they are set here instead.
            "client_config": S3ClientConfig(
                s3={"addressing_style": env.str("AWS_S3_ADDRESSING_STYLE", default=None)},
                signature_version=env.str("AWS_S3_SIGNATURE_VERSION", default="s3v4"),
                # botocore's defaults (60 s per connect and read, 5 legacy attempts) would hold an
                # upload or /readyz for minutes when the store hangs. Three attempts with
                # backoff ride out a blip; a dead store answers 503 in seconds.
                connect_timeout=5,
                read_timeout=30,
                retries={"mode": "standard", "max_attempts": 3},
            ),
            "default_acl": None,  # objects inherit the bucket's (private) policy, never public-read
            "querystring_auth": True,
            "querystring_expire": SIGNED_URL_SECONDS,
            "file_overwrite": False,
            "location": env.str("AWS_LOCATION", default=""),
        },
    }
else:
    _default_storage = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": MEDIA_ROOT, "base_url": None},
    }
STORAGES = {
    "default": _default_storage,
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Content-Security-Policy (django-csp): scripts and styles only from segweb's own static files,
# no inline code at all, so an injected <script> or on*= handler cannot run. Photos stored in
# S3 are shown through redirects to signed URLs: their origin must be allowed for images and
# for the viewer's fetches (SEGWEB_CSP_MEDIA_ORIGINS overrides the guess).
_S3_ENDPOINT = env.str("AWS_S3_ENDPOINT_URL", default="")
CSP_MEDIA_ORIGINS = env.list(
    "SEGWEB_CSP_MEDIA_ORIGINS",
    default=(
        ([_S3_ENDPOINT.rstrip("/"), _S3_ENDPOINT.replace("://", "://*.", 1).rstrip("/")]
         if _S3_ENDPOINT else ["https://*.amazonaws.com"])
        if AWS_STORAGE_BUCKET_NAME else []
    ),
)  # fmt: skip
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:", "blob:", *CSP_MEDIA_ORIGINS],
        "connect-src": [SELF, *CSP_MEDIA_ORIGINS],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    },
}
STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"  # `manage.py collectstatic` target, for a front proxy
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # WhiteNoise warns on every start without it
WHITENOISE_USE_FINDERS = True  # serve app static files even without a collectstatic step
FILE_UPLOAD_PERMISSIONS = 0o640
FILE_UPLOAD_DIRECTORY_PERMISSIONS = 0o750

# --- Auth -----------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# django-axes first: it refuses a locked-out account or address before any password is checked.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "segmentation.accounts.CasefoldUsernameBackend",
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "job-list"
LOGOUT_REDIRECT_URL = "login"
SIGNUP_ENABLED = env.bool("SEGWEB_SIGNUP_ENABLED", default=True)
# How many reverse proxies in front of segweb append to X-Forwarded-For (nginx: 1). 0 means
# segweb is reached directly and the header, which any client can send, is ignored. Every
# throttle keys on the address this gives (segmentation.accounts.client_ip).
TRUSTED_PROXIES = env.int("SEGWEB_TRUSTED_PROXIES", default=0)
if TRUSTED_PROXIES < 0:
    raise ImproperlyConfigured("SEGWEB_TRUSTED_PROXIES must be 0 or more.")

# Password guessing (django-axes): the sign-in page, the admin's and POST /api/auth/token/ all
# count failures per account (every spelling of its name) and per client address; past the
# limit, either is refused for the cool-off, which each further failure restarts.
AXES_FAILURE_LIMIT = env.int("SEGWEB_LOGIN_FAILURE_LIMIT", default=10)
AXES_COOLOFF_TIME = timedelta(minutes=env.float("SEGWEB_LOGIN_COOLOFF_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_CLIENT_IP_CALLABLE = "segmentation.accounts.client_ip"
AXES_USERNAME_CALLABLE = "segmentation.accounts.lockout_username"
AXES_LOCKOUT_CALLABLE = "segmentation.accounts.lockout_response"
# A success does not wipe the failures: it would let someone with an account of their own reset
# their address's count between guesses at other accounts.
AXES_RESET_ON_SUCCESS = False
AXES_DISABLE_ACCESS_LOG = True  # no row per successful sign-in kept for ever: only failures
AXES_VERBOSE = False

# --- Internationalisation -------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("SEGWEB_TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

# --- segweb ---------------------------------------------------------------------------------
SEGWEB = {
    "MAX_UPLOAD_BYTES": int(env.float("SEGWEB_MAX_UPLOAD_MB", default=25) * 1024 * 1024),
    "MAX_PIXELS": int(env.float("SEGWEB_MAX_MEGAPIXELS", default=40) * 1_000_000),
    # Images the web process decodes at once (uploads, re-drawn overlays); a request waits at
    # most DECODE_WAIT_SECONDS for a slot, then gets 503. A slot holds up to ~170 MB (a 40 MP
    # float TIFF; docs/benchmarks.md).
    "DECODE_SLOTS": env.int("SEGWEB_DECODE_SLOTS", default=2),
    "DECODE_WAIT_SECONDS": env.float("SEGWEB_DECODE_WAIT_SECONDS", default=5),
    # Per user: bytes of stored files (photos and results) and jobs waiting or running.
    "QUOTA_BYTES": env.int("SEGWEB_QUOTA_BYTES", default=2 * 1024**3),
    "QUOTA_QUEUED_JOBS": env.int("SEGWEB_QUOTA_QUEUED_JOBS", default=100),
    "DEFAULT_THRESHOLD": env.float("SEGWEB_DEFAULT_THRESHOLD", default=0.5),
    # Whether users may pick a job's precision (fp32, int8); else every job gets SEGWEB_PRECISION.
    "PRECISION_PER_JOB": env.bool("SEGWEB_PRECISION_PER_JOB", default=False),
    # Detections down to this score are kept (or down to a job's own threshold, if lower), so
    # that a job's threshold can be lowered afterwards without running the model again.
    "KEEP_MIN_SCORE": env.float("SEGWEB_KEEP_MIN_SCORE", default=0.25),
    "JOB_TIME_LIMIT": env.int("SEGWEB_JOB_TIME_LIMIT", default=600),  # seconds
    "HISTORY_PAGE_SIZE": 24,
    # Recovery of jobs a dead worker or a lost message left behind (services.jobs_sweep). A
    # running job refreshes its heartbeat every HEARTBEAT seconds; one silent for STALE_AFTER
    # lost its worker and is queued again. Worst case from a worker's death to its job being
    # queued again: STALE_AFTER + SWEEP_INTERVAL (90 s by default).
    "HEARTBEAT_SECONDS": env.float("SEGWEB_HEARTBEAT_SECONDS", default=10),
    "STALE_AFTER_SECONDS": env.float("SEGWEB_STALE_AFTER_SECONDS", default=60),
    "SWEEP_INTERVAL_SECONDS": env.float("SEGWEB_SWEEP_INTERVAL_SECONDS", default=30),
    # A queued job published this long ago and still not taken is published again: what
    # recovers jobs whose message the broker lost (a Redis restarted without persistence).
    "REQUEUE_AFTER_SECONDS": env.float("SEGWEB_REQUEUE_AFTER_SECONDS", default=600),
    # Exports (issue 12). Each export is one worker task that reads every selected photo: the
    # job limit and the time limit bound it, the per-user limit bounds how many wait.
    "EXPORT_MAX_JOBS": env.int("SEGWEB_EXPORT_MAX_JOBS", default=2000),
    "EXPORT_MAX_ACTIVE": env.int("SEGWEB_EXPORT_MAX_ACTIVE", default=2),
    "EXPORT_DAYS": env.float("SEGWEB_EXPORT_DAYS", default=7),
    "EXPORT_TIME_LIMIT": env.int("SEGWEB_EXPORT_TIME_LIMIT", default=3600),
    # An export whose progress has not moved this long lost its worker (one job of 40 MP
    # cut-outs can take a minute on 2 cores).
    "EXPORT_STALE_AFTER_SECONDS": 600,
    # A job's masks or cut-outs are drawn in the web request when (instances x megapixels)
    # stays under this; larger jobs go through POST /api/exports/.
    "DIRECT_EXPORT_MAX_MEGAPIXELS": env.int("SEGWEB_DIRECT_EXPORT_MAX_MEGAPIXELS", default=1000),
    # Collections: one ZIP (or one request of several photos) becomes many jobs. Each photo is
    # still checked against MAX_UPLOAD_BYTES and MAX_PIXELS; these bound the archive itself.
    "ARCHIVE_MAX_BYTES": int(env.float("SEGWEB_ARCHIVE_MAX_MB", default=1024) * 1024 * 1024),
    "ARCHIVE_MAX_MEMBERS": env.int("SEGWEB_ARCHIVE_MAX_FILES", default=500),
    "ARCHIVE_MAX_TOTAL_BYTES": int(
        env.float("SEGWEB_ARCHIVE_MAX_TOTAL_MB", default=2048) * 1024 * 1024
    ),
    # Webhooks: links in their bodies start with this (e.g. https://segweb.example.com); empty,
    # they are paths. Loopback destinations are for tests and one-machine set-ups only.
    "PUBLIC_URL": env.str("SEGWEB_PUBLIC_URL", default="").rstrip("/"),
    "WEBHOOK_ALLOW_LOOPBACK": env.bool("SEGWEB_WEBHOOK_ALLOW_LOOPBACK", default=False),
    "WEBHOOK_SWEEP_SECONDS": 15,  # retries are published by this sweep when they fall due
    # GET /metrics answers only with "Authorization: Bearer <this>"; empty, it is a 404.
    "METRICS_TOKEN": env.str("SEGWEB_METRICS_TOKEN", default=""),
}
# Several photos in one form post or API request (a collection): Django's own cap on the
# number of files, raised to the collection limit (Label Studio users hit its default of 100).
DATA_UPLOAD_MAX_NUMBER_FILES = SEGWEB["ARCHIVE_MAX_MEMBERS"]
if SEGWEB["STALE_AFTER_SECONDS"] < 3 * SEGWEB["HEARTBEAT_SECONDS"]:
    # Otherwise one late heartbeat (a busy database) would have a healthy job run twice.
    raise ImproperlyConfigured(
        "SEGWEB_STALE_AFTER_SECONDS must be at least 3 × SEGWEB_HEARTBEAT_SECONDS."
    )

# --- Celery ---------------------------------------------------------------------------------
QUEUE_DIR = DATA_DIR / "queue"
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="filesystem://localhost/")
if CELERY_BROKER_URL.startswith("filesystem://"):
    # One machine, no Redis: kombu's file transport keeps messages under $SEGWEB_DATA_DIR. It
    # cannot create its folders itself, so they are made here, by whichever process starts first.
    for _folder in ("messages", "control", "processed"):
        (QUEUE_DIR / _folder).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(QUEUE_DIR / "messages"),
        "data_folder_out": str(QUEUE_DIR / "messages"),
        "control_folder": str(QUEUE_DIR / "control"),
        "processed_folder": str(QUEUE_DIR / "processed"),
        "store_processed": False,
    }
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": SEGWEB["JOB_TIME_LIMIT"] * 2}
    if CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
        CELERY_BROKER_TRANSPORT_OPTIONS.update(
            # A broker that stops answering must not hang a publish (an upload) or /readyz:
            # connect in 3 s or give up; a reply overdue by 10 s means the connection is dead.
            # Both stay above kombu's 1-second BRPOP poll.
            socket_connect_timeout=3,
            socket_timeout=10,
            # Several segweb instances (or test runs) can share one Redis: each prefixes its keys.
            global_keyprefix=env.str("SEGWEB_REDIS_KEY_PREFIX", default=""),
        )
# Webhook deliveries have a queue of their own, which every worker also consumes: they are not
# stuck behind hundreds of queued photos, and a photo waits at most for one short delivery.
CELERY_TASK_QUEUES = (
    Queue("celery", Exchange("celery"), routing_key="celery"),
    Queue("webhooks", Exchange("webhooks"), routing_key="webhooks"),
)
CELERY_TASK_ROUTES = {
    "segmentation.deliver_webhook": {"queue": "webhooks"},
    "segmentation.sweep_webhooks": {"queue": "webhooks"},
}
CELERY_TASK_IGNORE_RESULT = True  # results live in the database, not in a result backend
CELERY_TASK_ACKS_LATE = True  # a job whose worker dies is delivered again
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1  # one photo at a time per process: they are long tasks
# A new pool process loads its model before it reports for work (segweb/celery.py). Celery
# kills a child that has not reported within 4 s by default: on a busy machine the model loads
# slower than that, and the worker then kills and re-forks its children for ever (seen in
# tests/scale when a child was replaced under load).
CELERY_WORKER_PROC_ALIVE_TIMEOUT = 120
CELERY_TASK_TIME_LIMIT = SEGWEB["JOB_TIME_LIMIT"] + 30
CELERY_TASK_SOFT_TIME_LIMIT = SEGWEB["JOB_TIME_LIMIT"]
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_CONNECTION_MAX_RETRIES = None  # a worker waits out a broker outage, however long
# On a lost broker connection, let running jobs finish (their result is in the database) rather
# than kill them; their unacknowledged message comes back later and finds the job done.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_WORKER_HIJACK_ROOT_LOGGER = False  # LOGGING below formats everything, once
CELERY_WORKER_REDIRECT_STDOUTS = False
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")
CELERY_BEAT_SCHEDULE = {
    # Recovers jobs whose worker died or whose message the broker lost (services.jobs_sweep).
    "sweep-jobs": {
        "task": "segmentation.sweep_jobs",
        "schedule": SEGWEB["SWEEP_INTERVAL_SECONDS"],
        # A sweep that waited longer than one interval in the queue is superseded by the next.
        "options": {"expires": SEGWEB["SWEEP_INTERVAL_SECONDS"]},
    },
    # Deletes expired exports and their files; fails exports whose worker died.
    "sweep-exports": {
        "task": "segmentation.sweep_exports",
        "schedule": 300,
        "options": {"expires": 300},
    },
    # Publishes webhook deliveries whose retry is due (services.webhooks_sweep).
    "sweep-webhooks": {
        "task": "segmentation.sweep_webhooks",
        "schedule": SEGWEB["WEBHOOK_SWEEP_SECONDS"],
        "options": {"expires": SEGWEB["WEBHOOK_SWEEP_SECONDS"]},
    },
}

# --- REST API -------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "segmentation.api.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # Every body any route reads is bounded in size and JSON depth (no RecursionError, no
    # unbounded read into memory): DRF's own parsers are neither.
    "DEFAULT_PARSER_CLASSES": [
        "segmentation.api.parsers.BoundedJSONParser",
        "segmentation.api.parsers.BoundedFormParser",
        "segmentation.api.parsers.BoundedMultiPartParser",
    ],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 20,
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "segmentation.api.exceptions.exception_handler",
    "DEFAULT_THROTTLE_RATES": {
        "job_create": env.str("SEGWEB_JOB_CREATE_RATE", default="60/min"),
        "token": env.str("SEGWEB_TOKEN_RATE", default="20/min"),  # slows password guessing
        # Each change may cost one overlay re-render (about a second for 12 MP) on next view.
        "threshold": env.str("SEGWEB_THRESHOLD_RATE", default="30/min"),
        # Exports, masks and cut-outs: each reads a photo and draws PNGs in the request.
        "export": env.str("SEGWEB_EXPORT_RATE", default="60/min"),
        "signup": env.str("SEGWEB_SIGNUP_RATE", default="10/hour"),  # accounts per client
    },
    # DRF's own rule for the client address, for any DRF code that asks (segweb's throttles
    # call accounts.client_ip, which follows the same rule).
    "NUM_PROXIES": TRUSTED_PROXIES,
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
# API tokens (django-rest-knox): hashed, one per client that signs in, `Authorization: Token`.
_TOKEN_TTL_DAYS = env.float("SEGWEB_TOKEN_TTL_DAYS", default=0)
REST_KNOX = {
    "TOKEN_TTL": timedelta(days=_TOKEN_TTL_DAYS) if _TOKEN_TTL_DAYS > 0 else None,
    "AUTH_HEADER_PREFIX": "Token",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "segweb API",
    "DESCRIPTION": "COCO instance segmentation of photos: upload, poll, fetch detections.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "segmentation.api.schema.document_unsupported_media_type",
    ],
}

# --- Logging --------------------------------------------------------------------------------
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("SEGWEB_LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
