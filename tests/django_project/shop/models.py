"""What the tasks write, so a test can see they ran (and how often)."""

from django.db import models


class Order(models.Model):
    item = models.TextField()


class Receipt(models.Model):
    order_id = models.BigIntegerField()
    text = models.TextField()
