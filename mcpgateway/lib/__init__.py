"""
Small helpers that know nothing of the gateway: strict JSON text
(L{jsontext}) and Deferred plumbing (L{deferreds}).
"""
