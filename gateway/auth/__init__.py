"""Who may talk to the gateway: Twilio webhook signatures, the public URL they cover, API tokens."""
