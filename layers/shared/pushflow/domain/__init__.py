"""The push domain: no AWS SDK, no database or cache driver in here."""
