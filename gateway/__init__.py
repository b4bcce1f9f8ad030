"""The governed front door of the models: identity, quotas, usage, audit, cache and content safety.

A stateless service in front of one or more inference servers: every request is authenticated (an
API key or an Entra ID access token), resolved to a tenant, counted exactly (the model's own
tokenizer, through the upstream's /tokenize), admitted against the tenant's limits in one atomic
Redis call, optionally answered from the tenant's response cache, checked for content safety, then
proxied (streams unbuffered) and settled with the real usage. Its state lives in Redis (counters,
revocations, cache) and PostgreSQL (tenants, keys, usage, audit); it knows the models only by URL.
"""
