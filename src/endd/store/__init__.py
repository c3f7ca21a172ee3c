"""The run store: a run directory's paths and "done" markers, atomic artifact I/O, saved models.

Every stage reads its inputs from here and writes its outputs here; the report reads only this.
"""

from endd.store.integrity import DamagedArtifactError, check_file, check_file_any, file_record
from endd.store.run_dir import RunDir
from endd.store.teacher_cache import TeacherRows

__all__ = [
    "DamagedArtifactError",
    "RunDir",
    "TeacherRows",
    "check_file",
    "check_file_any",
    "file_record",
]
