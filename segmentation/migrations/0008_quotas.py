from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("segmentation", "0007_tokens")]

    operations = [
        migrations.AddField(
            model_name="job",
            name="result_bytes",
            # Existing jobs count their photo only until they are run again.
            field=models.PositiveBigIntegerField(
                default=0,
                help_text="Bytes of the overlay files and preview (for the storage quota).",
            ),
        ),
    ]
