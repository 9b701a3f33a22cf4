"""API tokens move from DRF's authtoken (stored in clear) to django-rest-knox (hashed).

DRF's table is dropped with the tokens in it: they were stored in clear, and knox cannot adopt
them (it keeps only a digest of a token it generated). Every existing token stops working;
clients sign in again (POST /api/auth/token/, or `segweb login`).
"""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("segmentation", "0006_precision"),
        ("knox", "0009_extend_authtoken_field"),
    ]

    operations = [
        migrations.RunSQL("DROP TABLE IF EXISTS authtoken_token", migrations.RunSQL.noop),
    ]
