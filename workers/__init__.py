"""slidefarm's render hosts: ``celery -A workers worker`` starts one."""

from workers.celery_app import app

__all__ = ["app"]
