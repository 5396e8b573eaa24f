"""kern-finetune."""
