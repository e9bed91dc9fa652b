"""User-facing errors.

Anything a user can cause (bad config, missing file, wrong checkpoint) raises `UserError` with one
line that names the offending key/file and says what to do. The CLI prints it and exits 2; it never
shows a traceback for these.
"""


class UserError(Exception):
    """An error caused by input the user controls; its message is shown as-is, on one line."""


class TrainingDiverged(UserError):
    """Loss became NaN/inf. The last good checkpoint is kept on disk."""
