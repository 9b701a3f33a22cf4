from django.conf import settings


def segweb(request) -> dict:
    return {"signup_enabled": settings.SIGNUP_ENABLED}
