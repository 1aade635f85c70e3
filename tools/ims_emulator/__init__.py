"""The local IMS emulator: a test and development tool, never part of a deployment.

It lives outside ``functions/`` so that neither the container image nor the wheel carries a second
HTTP server whose ``/_emulator/`` admin routes need no authentication. Run it with
``PYTHONPATH=functions:tools python -m ims_emulator --port 8090``; ``README.md`` beside this file
lists its routes, credentials and fault injection.
"""

from ims_emulator.server import (
    ADMIN_PREFIX,
    CREATE_PATH,
    DEFAULT_PROJECT_ID,
    DELETE_IMAGE_PATH_PREFIX,
    IAM_TOKENS_PATH,
    IMAGE_STATUSES,
    IMAGES_PATH,
    JOB_TYPE_BY_BACKUP,
    JOB_TYPE_BY_INSTANCE,
    ROUTES,
    Deletion,
    EmulatedImage,
    EmulatedJob,
    EmulatorConfig,
    Fault,
    ImageStatus,
    ImsEmulator,
    RecordedRequest,
    format_time,
    main,
)

__all__ = [
    "ADMIN_PREFIX",
    "CREATE_PATH",
    "DEFAULT_PROJECT_ID",
    "DELETE_IMAGE_PATH_PREFIX",
    "IAM_TOKENS_PATH",
    "IMAGES_PATH",
    "IMAGE_STATUSES",
    "JOB_TYPE_BY_BACKUP",
    "JOB_TYPE_BY_INSTANCE",
    "ROUTES",
    "Deletion",
    "EmulatedImage",
    "EmulatedJob",
    "EmulatorConfig",
    "Fault",
    "ImageStatus",
    "ImsEmulator",
    "RecordedRequest",
    "format_time",
    "main",
]
