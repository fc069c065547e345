from django.urls import path

from . import views

urlpatterns = [
    path("aconn/", views.items_aconn),
    path("orm/", views.items_orm),
    path("stats/", views.stats),
]
