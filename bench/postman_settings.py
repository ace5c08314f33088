"""Minimal Django settings for django-postman, the peer in `make bench` (bench/peer_postman.py).

The database comes from BENCH_POSTMAN_DB (a database name on BENCH_POSTMAN_HOST, user postgres).
"""

import os

SECRET_KEY = "bench-only-not-a-secret"  # noqa: S105
DEBUG = False
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sites",
    "postman",
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("BENCH_POSTMAN_DB", "msg_bench_postman"),
        "USER": os.environ.get("BENCH_POSTMAN_USER", "postgres"),
        "HOST": os.environ.get("BENCH_POSTMAN_HOST", "127.0.0.1"),
        "PORT": os.environ.get("BENCH_POSTMAN_PORT", "5432"),
        "PASSWORD": os.environ.get("BENCH_POSTMAN_PASSWORD", ""),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
SITE_ID = 1
