"""Pure parsers: mail → text and send requests, phone numbers, SMS segments. No I/O."""
