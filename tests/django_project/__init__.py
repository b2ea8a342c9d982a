"""A real Django project for the django.tasks backend's tests (settings from env)."""
