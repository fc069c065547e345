"""A minimal Django project using aconn beside the ORM: `uvicorn mysite.asgi:application` from this folder.

The database comes from the environment (the test suite points it at its throwaway MariaDB):
DB_NAME, DB_USER, DB_PASSWORD, DB_HOST, DB_PORT.
"""

import os

import pymysql

pymysql.install_as_MySQLdb()  # Django's MySQL backend on PyMySQL: no C compiler needed for mysqlclient

SECRET_KEY = "example-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["mysite"]
ROOT_URLCONF = "mysite.urls"
# a scope per request, entered in the task Django runs the view in
MIDDLEWARE = ["aconn.django.scope_middleware"]
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.mysql",
        "NAME": os.environ.get("DB_NAME", "shop"),
        "USER": os.environ.get("DB_USER", "shop"),
        "PASSWORD": os.environ.get("DB_PASSWORD", ""),
        "HOST": os.environ.get("DB_HOST", "127.0.0.1"),
        "PORT": os.environ.get("DB_PORT", "3306"),
        "CONN_MAX_AGE": 60,  # Django's ORM and aconn both read it
        "CONN_HEALTH_CHECKS": True,
        # aconn's own keys sit beside Django's (Django ignores them): the cap per process
        "MAX_CONNS": int(os.environ.get("ACONN_MAX_CONNS", "4")),
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,  # keep the server's own loggers (uvicorn's)
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "aconn": {"handlers": ["console"], "level": "WARNING"},
        "django.request": {"handlers": ["console"], "level": "ERROR"},
    },
}
