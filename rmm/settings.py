"""Settings for the RMM execution engine.

Everything has an embedded default (SQLite, in-memory channel layer, django-q2's ORM
broker, keys generated into ``var/``); environment variables switch to production parts.
"""

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from rmm.core.private_files import read_secret_key

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("RMM_VAR_DIR", BASE_DIR / "var"))


def env_bool(name: str, default: bool = False) -> bool:
    return os.environ.get(name, str(default)).lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("RMM_DEBUG", False)
# Read here, never written: importing the settings writes no file. Without RMM_SECRET_KEY, the
# first start generates the file (rmm/core/apps.py).
SECRET_KEY = os.environ.get("RMM_SECRET_KEY") or read_secret_key(VAR_DIR)
ALLOWED_HOSTS = env_list("RMM_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("RMM_CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "daphne",
    "rmm.core.admin_site.RmmAdminConfig",  # django.contrib.admin, autocomplete labels its own
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_filters",
    "django_tables2",
    "django_htmx",
    "guardian",
    "django_q",
    "channels",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "axes",
    "csp",
    "rmm.core",
    "rmm.keys",
    "rmm.history",
    "rmm.outbox",
    "rmm.siem",
    "rmm.inventory",
    "rmm.access",
    "rmm.authority",
    "rmm.engine",
    "rmm.artefacts",
    "rmm.console",
    "evidence",
    "scripting",
    "profiles",
    "deployment",
    "patching",
    "containment",
    "sessions.apps.SessionsConfig",
    "rmm.updates",
    "rmm.signin",  # after django_otp's apps: its admin module takes their device admin away
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "rmm.core.middleware.AsyncWhiteNoiseMiddleware",  # WhiteNoise without a thread per request under ASGI
    # 503 at once while the database is down; a dependency's failure is a 503, never a 500
    "rmm.core.dependencies.FailFastMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # names the signed-in person as the actor of role, grant and schedule changes (rmm/access_changes.py)
    "rmm.access.changes.ActorMiddleware",
    "django_otp.middleware.OTPMiddleware",
    # admins, approvers and superusers act in the console and the admin only with a verified TOTP device
    "rmm.signin.middleware.SecondFactorMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django_htmx.middleware.HtmxMiddleware",  # request.htmx: the console's lists answer htmx with their table alone
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "axes.middleware.AxesMiddleware",  # last: turns a lockout into the lockout page
]

ROOT_URLCONF = "rmm.urls"
ASGI_APPLICATION = "rmm.asgi.application"

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
                "rmm.console.context.engaged_kill_switches",
                "rmm.console.context.pending_approvals",
            ],
        },
    },
]

DATABASE_URL = os.environ.get("DATABASE_URL", "")
# Under ASGI each request runs in a context of its own, so a persistent connection (CONN_MAX_AGE)
# is one new PostgreSQL connection per request, left open until garbage-collected. The ASGI
# server (rmm/asgi.py sets RMM_DB_POOL=1) shares a psycopg pool per process instead. Other
# processes keep plain connections: django-q2 forks its workers, which must not inherit a pool.
RMM_DB_POOL = env_bool("RMM_DB_POOL", False)
# How long a request waits for a pooled connection before it is answered 503 (Retry-After). Short
# on the agent tier (agents retry); while the database is down, requests are answered at once anyway
# (rmm.core.dependencies.FailFastMiddleware), so this is the wait of the one request a second that tries.
RMM_DB_POOL_TIMEOUT = float(os.environ.get("RMM_DB_POOL_TIMEOUT", "10"))
if DATABASE_URL:
    # A kept connection (or a pooled one) is checked before it is reused: after a database restart
    # no request or task gets a broken one.
    DATABASES = {
        "default": dj_database_url.parse(DATABASE_URL, conn_max_age=0 if RMM_DB_POOL else 60, conn_health_checks=True)
    }
    if RMM_DB_POOL and DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
            "min_size": 2,
            "max_size": int(os.environ.get("RMM_DB_POOL_SIZE", "10")),
            "timeout": RMM_DB_POOL_TIMEOUT,
            # A failed reconnection gives up within seconds instead of backing off for minutes, so
            # the next request that needs a connection makes one at once: a database that is back
            # serves again within a second or two, not after the pool's growing backoff.
            "reconnect_timeout": 5,
        }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("RMM_SQLITE_PATH", str(VAR_DIR / "rmm.sqlite3")),
            # IMMEDIATE takes the write lock at BEGIN, so read-then-append (the history
            # chain head) cannot interleave between two writers.
            "OPTIONS": {"transaction_mode": "IMMEDIATE", "timeout": 30, "init_command": "PRAGMA journal_mode=WAL;"},
        }
    }
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"].setdefault("TEST", {"NAME": ""})

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # first: refuses a locked-out username and address
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
ANONYMOUS_USER_NAME = None  # guardian: no anonymous user row; anonymous callers see nothing

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/console/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

# Sign-in (rmm/signin, docs/security.md "Sign-in"). People in the admin or approver role and
# superusers need a verified TOTP device (django-otp) in their session to act in the console or
# the admin. Failed passwords lock a username out from one address (django-axes); API bearer
# tokens and the agent protocol do not sign in and are not affected.
OTP_TOTP_ISSUER = "RMM"
AXES_FAILURE_LIMIT = int(os.environ.get("RMM_LOGIN_FAILURE_LIMIT", "5"))
AXES_COOLOFF_TIME = timedelta(minutes=int(os.environ.get("RMM_LOGIN_COOLOFF_MINUTES", "60")))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
# Attempts while locked out are refused (and recorded) but do not extend the cool-off.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_LOCKOUT_CALLABLE = "rmm.signin.views.locked_out"  # the page says for how long
AXES_ENABLE_ADMIN = False  # the admin stays read-only; unlock with `manage.py axes_reset_username`

# Browser hardening. RMM_HTTPS=1 when a TLS-terminating proxy is in front that sets
# X-Forwarded-Proto (and overwrites one sent by the client); the embedded default is plain
# http on 127.0.0.1.
RMM_HTTPS = env_bool("RMM_HTTPS", False)
SESSION_COOKIE_HTTPONLY = True
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
if RMM_HTTPS:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = True
    SECURE_HSTS_SECONDS = 365 * 24 * 3600
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# No inline script or style anywhere: the console, the admin, the sign-in pages and the API docs
# load theirs from static files. The console's live updates use a websocket.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'", "wss:"] if RMM_HTTPS else ["'self'", "ws:", "wss:"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "frame-ancestors": ["'none'"],
        "form-action": ["'self'"],
    }
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"  # whitenoise serves from here after collectstatic (rmm/core/middleware.py)
# The console's front-end libraries, installed from npm by `make install` (package-lock.json) and
# served from node_modules under static/vendor/ (never copied into the repository).
STATICFILES_DIRS = [
    ("vendor/htmx", BASE_DIR / "node_modules" / "htmx.org" / "dist"),
    ("vendor/chart.js", BASE_DIR / "node_modules" / "chart.js" / "dist"),
    ("vendor/xterm", BASE_DIR / "node_modules" / "@xterm" / "xterm"),
    ("vendor/asciinema-player", BASE_DIR / "node_modules" / "asciinema-player" / "dist" / "bundle"),
]
DJANGO_TABLES2_TEMPLATE = "console/table.html"
STORAGES = {
    "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": os.environ.get("RMM_EVIDENCE_ROOT", str(VAR_DIR / "evidence"))},
    },
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Evidence blobs, anchors and export bundles (docs/evidence.md): the filesystem above, or any
# S3-compatible store through django-storages. Blobs are named by their sha256 and never overwritten.
RMM_EVIDENCE_STORAGE = os.environ.get("RMM_EVIDENCE_STORAGE", "filesystem").strip().lower()
if RMM_EVIDENCE_STORAGE == "s3":
    STORAGES["default"] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": os.environ.get("RMM_EVIDENCE_S3_BUCKET", ""),
            "location": os.environ.get("RMM_EVIDENCE_S3_PREFIX", ""),
            "endpoint_url": os.environ.get("RMM_EVIDENCE_S3_ENDPOINT_URL") or None,
            "region_name": os.environ.get("RMM_EVIDENCE_S3_REGION") or None,
            # Empty: boto3's own chain (AWS_* variables, instance profile).
            "access_key": os.environ.get("RMM_EVIDENCE_S3_ACCESS_KEY_ID") or None,
            "secret_key": os.environ.get("RMM_EVIDENCE_S3_SECRET_ACCESS_KEY") or None,
            "file_overwrite": False,
            "default_acl": None,
        },
    }
    if not STORAGES["default"]["OPTIONS"]["bucket_name"]:
        raise ImproperlyConfigured("RMM_EVIDENCE_STORAGE=s3 needs RMM_EVIDENCE_S3_BUCKET")
elif RMM_EVIDENCE_STORAGE != "filesystem":
    raise ImproperlyConfigured("RMM_EVIDENCE_STORAGE must be 'filesystem' or 's3'")
# Days to keep each evidence type, e.g. "script_result=400,session_recording=90"; others are kept forever.
RMM_EVIDENCE_RETENTION_DAYS = {
    name.strip(): int(days)
    for name, _, days in (item.partition("=") for item in env_list("RMM_EVIDENCE_RETENTION_DAYS", ""))
}
# A running export whose builder shows no sign of life for this long (the task cluster died, or
# the task ran past its timeout) is queued again, up to RMM_EXPORT_MAX_ATTEMPTS builds, then failed.
RMM_EXPORT_STALE_SECONDS = int(os.environ.get("RMM_EXPORT_STALE_SECONDS", "300"))
RMM_EXPORT_MAX_ATTEMPTS = int(os.environ.get("RMM_EXPORT_MAX_ATTEMPTS", "3"))
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

REDIS_URL = os.environ.get("REDIS_URL", "")
# This deployment's name in a shared Redis database: its task list (django-q2) and its cache keys.
# Deployments (or test servers) that share one Redis database need one each.
RMM_INSTANCE_NAME = os.environ.get("RMM_TASK_QUEUE", "rmm")
# The cache holds API rate-limit counters: shared through Redis when there are several workers.
if REDIS_URL:
    # Short timeouts: with Redis down, the rate limit falls back to counting in the process
    # (rmm.core.dependencies.RedisFallbackThrottle).
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": RMM_INSTANCE_NAME,
            "OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 2},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
# The channel layer's Redis connections in one process. redis-py 8 caps a pool at 100 and raises
# "Too many connections" past it, and every websocket of the process may have a command in flight at
# once (a relay's group_send): 100 remote sessions on one daphne (200 websockets) cut relays with
# 1011 (docs/performance.md, Remote sessions). Per process: Redis's own limit (maxclients, 10,000 by
# default) is shared by every process, so it is the one to raise for many workers.
CHANNEL_REDIS_MAX_CONNECTIONS = 10_000
# Messages waiting in Redis for one process, all its websockets together (channels_redis keeps one
# queue per process); past it a group_send drops the message, logged at INFO only. channels_redis's
# 100 dropped relayed frames at 100 sessions on one daphne. 2,000 frames of at most 64 KiB from an
# agent (rmm_agent.session.READ) hold at most 128 MiB of Redis, for at most the layer's 60 s expiry.
CHANNEL_REDIS_CAPACITY = 2_000
if REDIS_URL:
    # redis-py 8 times reads out after 5 s by default, exactly when channels_redis's blocking pop
    # (5 s) returns empty: every receiver of the process then failed at random. Wait longer.
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [
                    {"address": REDIS_URL, "socket_timeout": 15, "max_connections": CHANNEL_REDIS_MAX_CONNECTIONS}
                ],
                "capacity": CHANNEL_REDIS_CAPACITY,
            },
        }
    }
    # The task list's name in Redis: deployments (or test servers) that share one Redis database
    # need one each, or one's cluster takes the other's tasks.
    Q_CLUSTER = {
        "name": RMM_INSTANCE_NAME,
        "redis": REDIS_URL,
        "workers": 2,
        "timeout": 300,
        "retry": 600,
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    Q_CLUSTER = {"name": "rmm", "orm": "default", "workers": 2, "timeout": 300, "retry": 600, "poll": 1}
Q_CLUSTER.update({"catch_up": False, "save_limit": 100, "max_attempts": 1})

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rmm.access.auth.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # Request bodies are JSON objects, nothing else (docs/psa-integration.md).
    "DEFAULT_PARSER_CLASSES": ["rmm.core.api.JsonObjectParser"],
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
    "DEFAULT_SCHEMA_CLASS": "rmm.core.api_schema.ApiSchema",
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "rmm.core.api.Pagination",  # limit is clamped to 1,000
    "PAGE_SIZE": 100,
    "EXCEPTION_HANDLER": "rmm.core.api.exception_handler",
    # Answers are ASCII JSON (\uXXXX escapes): an error that quotes input back stays encodable
    # whatever the input held (a lone surrogate cannot be written as UTF-8).
    "UNICODE_JSON": False,
    "DEFAULT_THROTTLE_CLASSES": ["rmm.core.api.TokenRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {"token": os.environ.get("RMM_API_RATE", "600/min")},
    "UNAUTHENTICATED_USER": None,
}
# GET /api/v1/jobs/ counts at most this many rows (docs/psa-integration.md): beyond, its count is a
# lower bound.
RMM_API_COUNT_LIMIT = int(os.environ.get("RMM_API_COUNT_LIMIT", "10000"))
SPECTACULAR_SETTINGS = {
    "TITLE": "RMM execution engine API",
    "DESCRIPTION": "Authority in, signed execution out, evidence back.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # Served from the installed sidecar package, never from a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    # The schema and the docs are for signed-in callers only (a session or a bearer token).
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    # Request and response bodies are separate components, so that a response names every
    # field it always carries as required and a request only those it must send.
    "COMPONENT_SPLIT_REQUEST": True,
    # Several models have a "status" field with different choices: name each set once.
    "ENUM_NAME_OVERRIDES": {
        "AuthorityStatusEnum": "rmm.authority.models.AuthorityStatus",
        "ApprovalStatusEnum": "rmm.artefacts.states.ApprovalStatus",
        "JobStatusEnum": "rmm.engine.states.JobStatus",
        "ComparisonEnum": "profiles.models.Comparison",
        "ObservationStateEnum": "profiles.models.ObservationState",
        "ContainmentActionEnum": "containment.models.ContainmentAction",
        "DeploymentActionEnum": "deployment.models.DeploymentAction",
        "FindingSourceEnum": "patching.models.FindingSource",
        "CatalogSourceEnum": "patching.models.CatalogSource",
    },
}

# Engine
# Signing keys (docs/security.md, Keys and credentials): private keys from RMM_SIGNING_KEYS (PEM, or
# base64 of PEM) when set, else the *.pem files of RMM_SIGNING_KEY_DIR; RMM_SIGNING_KEY_FILE is the
# single key of servers from before rotation, imported as the first key on upgrade.
RMM_SIGNING_KEYS = os.environ.get("RMM_SIGNING_KEYS", "")
RMM_SIGNING_KEY_DIR = os.environ.get("RMM_SIGNING_KEY_DIR", str(VAR_DIR / "keys" / "signing"))
# Published agent releases (rmm.updates.releases), and how long a new version has to check in
# before the agent rolls back to the one before (docs/agent.md, "Self-update").
RMM_RELEASE_DIR = os.environ.get("RMM_RELEASE_DIR", str(VAR_DIR / "releases"))
RMM_AGENT_UPDATE_CHECK_IN_SECONDS = int(os.environ.get("RMM_AGENT_UPDATE_CHECK_IN_SECONDS", "120"))
RMM_SIGNING_KEY_FILE = os.environ.get("RMM_SIGNING_KEY_FILE", str(VAR_DIR / "keys" / "server_ed25519.pem"))
RMM_HEARTBEAT_INTERVAL = int(os.environ.get("RMM_HEARTBEAT_INTERVAL", "30"))
# An agent not seen for this long is offline (agent.offline); a held heartbeat is seen only when
# it is answered, up to one interval later, so keep this well above the interval.
RMM_AGENT_OFFLINE_SECONDS = int(os.environ.get("RMM_AGENT_OFFLINE_SECONDS", str(5 * RMM_HEARTBEAT_INTERVAL)))
RMM_LEASE_GRACE_SECONDS = int(os.environ.get("RMM_LEASE_GRACE_SECONDS", "60"))
# The MeshCentral session provider (docs/sessions-meshcentral.md): registered only when its URL,
# the broker's account and password are set; the CA file is MeshCentral's root-cert-public.crt
# when it uses the certificate it made itself.
RMM_MESHCENTRAL_URL = os.environ.get("RMM_MESHCENTRAL_URL", "").strip()
RMM_MESHCENTRAL_USER = os.environ.get("RMM_MESHCENTRAL_USER", "").strip()
RMM_MESHCENTRAL_PASSWORD = os.environ.get("RMM_MESHCENTRAL_PASSWORD", "")
RMM_MESHCENTRAL_CA_FILE = os.environ.get("RMM_MESHCENTRAL_CA_FILE", "").strip()
RMM_MESHCENTRAL_TIMEOUT_SECONDS = float(os.environ.get("RMM_MESHCENTRAL_TIMEOUT_SECONDS", "15"))
# How long an endpoint may take to come back from a reboot a step asked for: meanwhile its agent
# is rebooting (not offline); past it, the job whose next step waited ends lost.
RMM_REBOOT_GRACE_SECONDS = int(os.environ.get("RMM_REBOOT_GRACE_SECONDS", "900"))
RMM_INSTRUCTION_TTL_SECONDS = int(os.environ.get("RMM_INSTRUCTION_TTL_SECONDS", str(24 * 3600)))
# Where the proxy serves the blob store from (an nginx ``internal`` location, e.g. "/_artefacts/"):
# set, an agent's artefact is answered with X-Accel-Redirect and the proxy sends the bytes;
# empty, the agent tier streams them itself (docs/operations.md).
RMM_ARTEFACT_ACCEL_REDIRECT = os.environ.get("RMM_ARTEFACT_ACCEL_REDIRECT", "").strip()
# The same for compliance exports' bundles: the server still checks the caller and the bundle's
# hash and records the download; the proxy sends the bytes (docs/evidence.md).
RMM_EVIDENCE_ACCEL_REDIRECT = os.environ.get("RMM_EVIDENCE_ACCEL_REDIRECT", "").strip()
RMM_DEFAULT_TIMEOUT_SECONDS = int(os.environ.get("RMM_DEFAULT_TIMEOUT_SECONDS", "300"))
RMM_MAX_LEASE_PER_HEARTBEAT = int(os.environ.get("RMM_MAX_LEASE_PER_HEARTBEAT", "4"))
# Throttles: at most this many running instructions per asset, per site and in all (0: no ceiling);
# jobs over many assets are released in waves of RMM_WAVE_SIZE every RMM_WAVE_INTERVAL_SECONDS.
RMM_MAX_RUNNING_PER_ASSET = int(os.environ.get("RMM_MAX_RUNNING_PER_ASSET", "1"))
RMM_MAX_RUNNING_PER_SITE = int(os.environ.get("RMM_MAX_RUNNING_PER_SITE", "0"))
RMM_MAX_RUNNING_TOTAL = int(os.environ.get("RMM_MAX_RUNNING_TOTAL", "0"))
RMM_WAVE_SIZE = int(os.environ.get("RMM_WAVE_SIZE", "50"))
RMM_WAVE_INTERVAL_SECONDS = int(os.environ.get("RMM_WAVE_INTERVAL_SECONDS", "60"))
# An agent calling faster than this is told to slow down (429 with Retry-After).
RMM_HEARTBEAT_MIN_SPACING_SECONDS = float(os.environ.get("RMM_HEARTBEAT_MIN_SPACING_SECONDS", "1"))
# Callers that are not authenticated agents (docs/security.md, Refusals by unknown callers): their
# refusals are recorded once per address and kind in each window of this many seconds, then counted;
# past RMM_AGENT_REFUSALS_PER_WINDOW refusals from one address in a window, the agent protocol answers
# such callers 429 from the cache, without the database.
RMM_AGENT_REFUSAL_WINDOW_SECONDS = float(os.environ.get("RMM_AGENT_REFUSAL_WINDOW_SECONDS", "60"))
RMM_AGENT_REFUSALS_PER_WINDOW = int(os.environ.get("RMM_AGENT_REFUSALS_PER_WINDOW", "30"))
# Pending approvals (script versions, jobs) expire after this long and are rejected.
RMM_APPROVAL_TTL_HOURS = int(os.environ.get("RMM_APPROVAL_TTL_HOURS", "72"))
# Software packages (docs/deployment.md): the largest installer accepted, by upload or download,
# and how long a registration's download may wait for the next bytes.
RMM_PACKAGE_MAX_BYTES = int(os.environ.get("RMM_PACKAGE_MAX_BYTES", str(2 * 1024**3)))
RMM_PACKAGE_DOWNLOAD_TIMEOUT = int(os.environ.get("RMM_PACKAGE_DOWNLOAD_TIMEOUT", "60"))
# API tokens (docs/security.md, API tokens): those of users who may approve or administer expire
# after RMM_PRIVILEGED_TOKEN_HOURS; others after RMM_TOKEN_HOURS, or never when it is 0.
RMM_PRIVILEGED_TOKEN_HOURS = float(os.environ.get("RMM_PRIVILEGED_TOKEN_HOURS", "12"))
RMM_TOKEN_HOURS = float(os.environ.get("RMM_TOKEN_HOURS", "0"))
RMM_ENROLLMENT_TOKEN_TTL_HOURS = int(os.environ.get("RMM_ENROLLMENT_TOKEN_TTL_HOURS", "24"))
RMM_ENROLLMENT_TOKEN_USES = int(os.environ.get("RMM_ENROLLMENT_TOKEN_USES", "100"))

# The outbox's PSA endpoint: every event type, signed per Standard Webhooks (rmm/outbox). Empty: off.
RMM_PSA_WEBHOOK_URL = os.environ.get("RMM_PSA_WEBHOOK_URL", "")
RMM_PSA_WEBHOOK_SECRET = os.environ.get("RMM_PSA_WEBHOOK_SECRET", "")
# The outbox (rmm/outbox): attempts per delivery before it is dead, the first retry's wait (it
# doubles, up to an hour, with jitter), and how long one attempt may take.
RMM_WEBHOOK_MAX_ATTEMPTS = int(os.environ.get("RMM_WEBHOOK_MAX_ATTEMPTS", "15"))
RMM_WEBHOOK_RETRY_BASE_SECONDS = float(os.environ.get("RMM_WEBHOOK_RETRY_BASE_SECONDS", "10"))
RMM_WEBHOOK_TIMEOUT_SECONDS = float(os.environ.get("RMM_WEBHOOK_TIMEOUT_SECONDS", "15"))
# Deliveries to one endpoint go in batches over one connection: at most RMM_WEBHOOK_BATCH at a
# time, one task sending batch after batch for at most RMM_WEBHOOK_ROUND_SECONDS.
RMM_WEBHOOK_BATCH = int(os.environ.get("RMM_WEBHOOK_BATCH", "100"))
RMM_WEBHOOK_ROUND_SECONDS = float(os.environ.get("RMM_WEBHOOK_ROUND_SECONDS", "30"))
# Webhook subscriptions (docs/integrations.md): loopback and private addresses are refused unless
# allowed (by default only with RMM_DEBUG); a rotated secret keeps signing for this many hours.
RMM_WEBHOOK_ALLOW_PRIVATE = env_bool("RMM_WEBHOOK_ALLOW_PRIVATE", DEBUG)
RMM_WEBHOOK_SECRET_OVERLAP_HOURS = float(os.environ.get("RMM_WEBHOOK_SECRET_OVERLAP_HOURS", "24"))
# EDR containment (docs/integrations.md#edr-containment): how agents reach this server (host:port,
# comma-separated), the only place a contained endpoint may still reach; an isolate runs at once, a
# release waits for a second person unless these say otherwise.
RMM_CONTAINMENT_SERVER = env_list("RMM_CONTAINMENT_SERVER", "")
RMM_CONTAINMENT_ISOLATE_NEEDS_APPROVAL = env_bool("RMM_CONTAINMENT_ISOLATE_NEEDS_APPROVAL", False)
RMM_CONTAINMENT_RELEASE_NEEDS_APPROVAL = env_bool("RMM_CONTAINMENT_RELEASE_NEEDS_APPROVAL", True)

# The SIEM feed (rmm/siem, docs/integrations.md#the-siem-feed): the HOSTNAME of its syslog records
# (default: this machine's), one attempt's timeout, events per batch, the first retry's wait (it
# doubles, up to five minutes), how long one run of the task cluster's minute task follows the
# history at most (it hands over to the next minute's run as soon as that starts; keep it under
# Q_CLUSTER's timeout, 300 s), looking every RMM_SIEM_POLL_SECONDS, and how long one destination is
# shipped (by `rmm_siem ship`) before the next gets its turn.
RMM_SIEM_HOSTNAME = os.environ.get("RMM_SIEM_HOSTNAME", "")
RMM_SIEM_TIMEOUT_SECONDS = float(os.environ.get("RMM_SIEM_TIMEOUT_SECONDS", "10"))
RMM_SIEM_BATCH = int(os.environ.get("RMM_SIEM_BATCH", "500"))
RMM_SIEM_RETRY_BASE_SECONDS = float(os.environ.get("RMM_SIEM_RETRY_BASE_SECONDS", "5"))
RMM_SIEM_FOLLOW_SECONDS = float(os.environ.get("RMM_SIEM_FOLLOW_SECONDS", "240"))
RMM_SIEM_POLL_SECONDS = float(os.environ.get("RMM_SIEM_POLL_SECONDS", "1"))
RMM_SIEM_SHIP_SECONDS = float(os.environ.get("RMM_SIEM_SHIP_SECONDS", "20"))
# Retry-After (seconds) of a 503 answered while a dependency is down (docs/operations.md).
RMM_UNAVAILABLE_RETRY_AFTER = int(os.environ.get("RMM_UNAVAILABLE_RETRY_AFTER", "5"))
# Run background tasks inline instead of through the cluster (tests, single-process tools).
RMM_TASKS_SYNC = env_bool("RMM_TASKS_SYNC", False)

# The ASGI server's garbage-collector thresholds (rmm/asgi.py, docs/performance.md): three integers.
RMM_GC_THRESHOLDS = tuple(int(n) for n in env_list("RMM_GC_THRESHOLDS", "700,10,10000"))
# Middleware wrapped outermost around the agent tier's own handler (rmm/asgi.py), which skips
# MIDDLEWARE; empty in the product (the fleet benchmark's settings add its query counter).
RMM_AGENT_TIER_MIDDLEWARE: list[str] = []

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("RMM_LOG_LEVEL", "WARNING")},
}
