from django.db import models


class Item(models.Model):
    """Read by the ORM view; the table is created outside Django (the example has no migrations)."""

    name = models.CharField(max_length=100)

    class Meta:
        managed = False
        db_table = "django_items"
