"""Messaging and feedback rules and data. No Flask or Celery imports live here."""
