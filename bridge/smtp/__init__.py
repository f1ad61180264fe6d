"""SMTP intake: the aiosmtpd handler (:mod:`.handler`) and server wiring (:mod:`.server`)."""
