"""Errors a user can cause and fix. The CLI shows their message as one line, without a traceback."""


class JmvaeError(Exception):
    """Base class for expected failures; the message is one clear line meant for the user."""

    exit_code = 1


class OpenCV4Needed(JmvaeError):
    """Finding and aligning faces use OpenCV 4's Haar cascades and HOG descriptor, which OpenCV 5 dropped."""

    def __init__(self) -> None:
        super().__init__(
            "face detection needs OpenCV 4's Haar cascades and HOG: pip install 'opencv-python-headless>=4.8,<5'"
        )
