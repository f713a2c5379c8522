"""AtomicPusher: TFX's Pusher, except that a model server never sees a half-written version directory.

TFX 1.16's Pusher copies the model file by file straight into <base>/<unix seconds>/ (saved_model.pb last,
as a "ready" signal). A server polling <base> meanwhile lists the version directory at once and may try to
load it before the variables are complete; a run killed mid-copy leaves a numeric directory behind that
the server keeps trying to load (or loads without its variables), forever. Two pushes in the same second
pick the same version: TFX then skips the copy but still records the model as pushed.

Here, per push:
  1. the version is max(now in unix seconds, highest numeric version already in <base> + 1): versions
     always increase (TF Serving's default policy serves the highest number) and never collide;
  2. the model is copied into a temporary sibling `<base>/.tmp-<version>-<random>`;
  3. the temporary directory is renamed to `<base>/<version>` in one rename(2) call, atomic on a POSIX
     file system: the numeric directory appears complete or not at all. If another push took that
     version in the meantime the rename fails (the target exists and is not empty) and the next
     number is tried;
  4. on any error the temporary directory is removed; a push killed with SIGKILL can leave only a
     `.tmp-*` directory, which is never loaded and is reported (and removed when older than a day)
     by the next push.

A model whose files equal those of the version being served (the highest) is not pushed again: the gated
Evaluator runs on every pipeline run, so an unchanged rerun blesses the same model a second time.

Why `.tmp-...` is invisible to TF Serving: its FileSystemStoragePathSource keeps only children whose
whole name parses as a number (tensorflow_serving/sources/storage_path/file_system_storage_path_source.cc:
ParseVersionNumber = strings::safe_strto64, which accepts optional spaces, an optional '-', digits and
nothing else; "Note that strings that cannot be parsed as a number are skipped"). A name starting with
'.' never parses. On object stores (gs://, s3://), where GetChildren lists every object and a
"directory rename" is a copy of each object, step 3 falls back to TFX's ordering: everything but
saved_model.pb first, saved_model.pb last, from the complete temporary copy; that is no worse than TFX.
"""
from __future__ import annotations

import errno
import os
import re
import time
import uuid
from typing import Any, Dict, List, Optional

from absl import logging
from tfx import types
from tfx.components.pusher import component as pusher_component
from tfx.components.pusher import executor as pusher_executor
from tfx.dsl.components.base import executor_spec
from tfx.dsl.io import fileio
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils, proto_utils

TEMP_PREFIX = ".tmp-"
SAVED_MODEL_FILE = "saved_model.pb"
STALE_TEMP_SECONDS = 24 * 3600
_MAX_VERSION_ATTEMPTS = 100
_COMPARE_CHUNK = 16 << 20
_VERSION_NAME = re.compile(r"^[0-9]+$")


def is_remote(path: str) -> bool:
    return "://" in path


def existing_versions(base_directory: str) -> List[int]:
    """The numeric version directories under base_directory (what TF Serving would load)."""
    if not fileio.exists(base_directory):
        return []
    return sorted(int(name.rstrip("/")) for name in fileio.listdir(base_directory)
                  if _VERSION_NAME.match(name.rstrip("/")))


def next_version(base_directory: str, now: Optional[float] = None) -> int:
    """Unix seconds, or one more than the newest existing version if that is not older (same second, clock skew)."""
    versions = existing_versions(base_directory)
    now_seconds = int(time.time() if now is None else now)
    return max([now_seconds] + [v + 1 for v in versions])


def _copy_file(source: str, destination: str) -> None:
    """One file copy (a seam for tests that interrupt a push)."""
    fileio.copy(source, destination, overwrite=True)


def copy_tree(source: str, destination: str) -> None:
    """Copies every file of source into destination (created); the top-level saved_model.pb goes last."""
    source = source.rstrip("/")
    fileio.makedirs(destination)
    saved_model = None
    for directory, _, files in fileio.walk(source):
        relative = os.path.relpath(directory.rstrip("/"), source)
        target_dir = destination if relative == "." else os.path.join(destination, relative)
        fileio.makedirs(target_dir)
        for name in sorted(files):
            if relative == "." and name == SAVED_MODEL_FILE:
                saved_model = (os.path.join(source, name), os.path.join(destination, name))
            else:
                _copy_file(os.path.join(directory, name), os.path.join(target_dir, name))
    if saved_model:
        _copy_file(*saved_model)


def _remove(path: str) -> None:
    try:
        if fileio.exists(path):
            fileio.rmtree(path)
    except Exception as e:  # cleanup must not hide the error that caused it
        logging.warning("Could not remove the temporary push directory %s: %s", path, e)


def _report_leftovers(base_directory: str) -> None:
    """Temporary directories of pushes that were killed: warn, and remove those older than a day."""
    if is_remote(base_directory) or not os.path.isdir(base_directory):
        return
    for name in os.listdir(base_directory):
        if not name.startswith(TEMP_PREFIX):
            continue
        path = os.path.join(base_directory, name)
        age = time.time() - os.path.getmtime(path)
        if age > STALE_TEMP_SECONDS:
            logging.warning("Removing %s, left by a push interrupted %.0f hours ago.", path, age / 3600)
            _remove(path)
        else:
            logging.warning("%s was left by an interrupted (or still running) push; model servers ignore it.", path)


def _publish(temp_dir: str, base_directory: str, first_version: int) -> int:
    """Moves the complete copy in temp_dir to <base>/<version>; returns the version used."""
    version = first_version
    for _ in range(_MAX_VERSION_ATTEMPTS):
        version = max(version, next_version(base_directory, now=0))
        target = os.path.join(base_directory, str(version))
        if is_remote(base_directory):
            if fileio.exists(target):
                version += 1
                continue
            try:
                copy_tree(temp_dir, target)  # saved_model.pb last, from a complete source
            except BaseException:
                _remove(target)  # no partial version left behind where we can help it
                raise
            _remove(temp_dir)
            return version
        try:
            os.rename(temp_dir, target)  # atomic; fails if target is a non-empty directory
            return version
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            logging.info("Version %d was taken by another push; trying %d.", version, version + 1)
            version += 1
    raise RuntimeError(f"Could not find a free version directory under {base_directory} "
                       f"after {_MAX_VERSION_ATTEMPTS} attempts.")


def _files(root: str) -> Dict[str, str]:
    """Relative path -> absolute path of every file under root."""
    root = root.rstrip("/")
    return {os.path.relpath(os.path.join(directory.rstrip("/"), name), root): os.path.join(directory, name)
            for directory, _, names in fileio.walk(root) for name in names}


def served_version_of(model_path: str, base_directory: str) -> Optional[str]:
    """The version being served (the highest) if its files are byte for byte those of model_path, else None."""
    versions = existing_versions(base_directory)
    if not versions:
        return None
    served, ours = _files(os.path.join(base_directory, str(versions[-1]))), _files(model_path)
    if served.keys() != ours.keys():
        return None
    for relative, path in ours.items():
        with fileio.open(path, "rb") as a, fileio.open(served[relative], "rb") as b:
            while True:
                chunk = a.read(_COMPARE_CHUNK)
                if chunk != b.read(_COMPARE_CHUNK):
                    return None
                if not chunk:
                    break
    return str(versions[-1])


def push_model(model_path: str, base_directory: str) -> str:
    """Publishes model_path as a new version under base_directory, atomically; returns the version."""
    if not fileio.exists(os.path.join(model_path, SAVED_MODEL_FILE)):
        raise FileNotFoundError(f"{model_path} holds no {SAVED_MODEL_FILE}: refusing to push an incomplete model.")
    fileio.makedirs(base_directory)
    _report_leftovers(base_directory)
    version = next_version(base_directory)
    temp_dir = os.path.join(base_directory, f"{TEMP_PREFIX}{version}-{uuid.uuid4().hex[:8]}")
    try:
        copy_tree(model_path, temp_dir)
        version = _publish(temp_dir, base_directory, version)
    except BaseException:
        _remove(temp_dir)
        raise
    return str(version)


class Executor(pusher_executor.Executor):
    """TFX's Pusher executor with an atomic, collision-free filesystem push (see the module docstring)."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        model_push = artifact_utils.get_single_instance(output_dict[standard_component_specs.PUSHED_MODEL_KEY])
        if not self.CheckBlessing(input_dict):
            self._MarkNotPushed(model_push)
            return
        model_path = self.GetModelPath(input_dict)
        destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], destination)
        if destination.WhichOneof("destination") != "filesystem":
            raise NotImplementedError(f"Invalid push destination {destination.WhichOneof('destination')}.")
        if destination.filesystem.versioning not in (pusher_pb2.Versioning.AUTO, pusher_pb2.Versioning.UNIX_TIMESTAMP):
            raise NotImplementedError(f"Invalid versioning {destination.filesystem.versioning}.")
        base_directory = destination.filesystem.base_directory
        version = served_version_of(model_path, base_directory)
        if version:
            logging.info("This model is already served as %s; not pushing it again.",
                         os.path.join(base_directory, version))
        else:
            version = push_model(model_path, base_directory)
            logging.info("Model written to serving path %s.", os.path.join(base_directory, version))
        serving_path = os.path.join(base_directory, version)
        io_utils.copy_dir(model_path, model_push.uri)  # the archive copy inside the pipeline root, as TFX does
        self._MarkPushed(model_push, pushed_destination=serving_path, pushed_version=version)


class AtomicPusher(pusher_component.Pusher):
    """tfx.components.Pusher with the atomic executor; same inputs, outputs and properties."""

    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)
