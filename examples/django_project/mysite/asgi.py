"""The ASGI entry point: Django's application, each request in an aconn scope, aconn's lifespan.

    uvicorn mysite.asgi:application            # --lifespan auto: aconn opens at startup, closes at shutdown
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

from django.core.asgi import get_asgi_application

django_application = get_asgi_application()  # sets Django up before aconn reads DATABASES

import aconn.django  # noqa: E402

application = aconn.django.asgi_application(django_application)
