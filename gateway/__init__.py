"""switchyard: an edge gateway for Twilio voice and SMS webhooks."""
