`mailproto queue` takes its spool from `MAILPROTO_SPOOL` when `--spool` is not given, as `mailproto sendmail` does, so that a system-wide spool is named once.
