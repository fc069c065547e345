from django.db import models


class Item(models.Model):
    """Read by both views; `python manage.py migrate` creates its table (migrations/0001_initial.py)."""

    name = models.CharField(max_length=100)

    class Meta:
        db_table = "django_items"
