-- The mail queue holds SMTP v2 answers as data (kind 'v2_answer': a ReplyRequest and the
-- ids of its messages, as JSON), which the mail relay renders when it sends them. An older
-- sms-bridge would send such a row's content as a mail: this number makes it refuse the
-- store instead. The index serves the console's look-up of a message's bounce by kind.
CREATE INDEX outgoing_mail_kind ON outgoing_mail (kind, created_at);
