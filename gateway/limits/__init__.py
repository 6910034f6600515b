"""Token-bucket rate limits and concurrency leases, in process or in Redis."""
