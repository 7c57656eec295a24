"""The extra-file size limit setting (EXPORT_MAX_EXTRA_FILE_BYTES) takes units."""

from __future__ import annotations


def test_settings_take_the_limit_with_units() -> None:
    from worker.settings import Settings

    assert Settings().max_extra_file_bytes == 256 * 1024**2
    assert Settings(max_extra_file_bytes="16MiB").max_extra_file_bytes == 16 * 1024**2
