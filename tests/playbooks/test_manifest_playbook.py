# Copyright (c) 2026, quorum.rollout contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""quorum.rollout.manifest through a real ansible-playbook run and the real `quorum-rollout` CLI:
the published manifest verifies with `quorum-rollout verify`, runs are idempotent, and a changed
artifact under a published version is refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from ansible_collections.quorum.rollout.plugins.modules import manifest

BIN = os.path.dirname(sys.executable)
CLI = shutil.which("quorum-rollout", path=BIN + os.pathsep + os.environ.get("PATH", ""))
pytestmark = pytest.mark.skipif(CLI is None, reason="the quorum-rollout agent CLI is not installed here")

PLAYBOOK = textwrap.dedent("""\
    - hosts: localhost
      gather_facts: false
      tasks:
        - name: Publish
          quorum.rollout.manifest:
            artifact: "{{ artifact }}"
            name: app
            version: "2.4"
            signing_keys: ["{{ key }}"]
            mirror_dir: "{{ mirror }}"
            cli: "{{ cli }}"
            targets: "{{ targets }}"
            channel: "{{ channel }}"
            chunks: "{{ chunks }}"
          register: __published
        - name: Report
          ansible.builtin.copy:
            content: "{{ __published | to_json }}"
            dest: "{{ out }}"
            mode: "0600"
""")


def _collections_path():
    parts = os.path.abspath(manifest.__file__).split(os.sep)
    return os.sep.join(parts[:parts.index("ansible_collections")])


def _run(tmp_path, check=False, targets=("*",), channel="", chunks=False):
    book = tmp_path / "play.yml"
    book.write_text(PLAYBOOK)
    out = tmp_path / "out.json"
    extra = {"artifact": str(tmp_path / "app-2.4.tar.gz"), "key": str(tmp_path / "release.key"),
             "mirror": str(tmp_path / "mirror"), "cli": CLI, "out": str(out), "targets": list(targets),
             "channel": channel, "chunks": chunks}
    argv = [sys.executable, "-m", "ansible.cli.playbook", "-i", "localhost,", "-c", "local", str(book),
            "-e", json.dumps(extra)] + (["--check"] if check else [])
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_COLLECTIONS_PATH=_collections_path(), ANSIBLE_PYTHON_INTERPRETER=sys.executable,
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"), ANSIBLE_NOCOLOR="1")
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=False)
    return proc, (json.loads(out.read_text()) if out.exists() and not check else None)


def test_publish_verify_idempotent_and_refuse_a_changed_artifact(tmp_path):
    subprocess.run([CLI, "keygen", "--out", str(tmp_path / "release")], check=True, capture_output=True)
    (tmp_path / "app-2.4.tar.gz").write_bytes(b"release bytes" * 100)

    proc, predicted = _run(tmp_path, check=True)
    assert predicted is None
    assert proc.returncode == 0 and "changed=2" in proc.stdout  # Publish + Report, both predicted
    assert not (tmp_path / "mirror").exists(), "check mode writes nothing"

    proc, first = _run(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert first["changed"] is True and first["reason"] == "not published yet"
    published = tmp_path / "mirror" / "app" / "2.4"
    verify = subprocess.run([CLI, "verify", str(published / "manifest.json"), "--artifact",
                             str(published / "app-2.4.tar.gz"), "--trusted-key", str(tmp_path / "release.pub"),
                             "--name", "app", "--version", "2.4"], capture_output=True, text=True, check=False)
    assert verify.returncode == 0, verify.stderr

    proc, second = _run(tmp_path)
    assert second["changed"] is False and second["reason"] == "already published and valid"

    proc, third = _run(tmp_path, targets=["intel-*"])
    assert third["changed"] is True and third["reason"] == "targets changed"

    proc, chunked = _run(tmp_path, targets=["intel-*"], chunks=True)
    assert chunked["changed"] is True and chunked["reason"] == "chunk index added", proc.stdout
    signed = json.loads((published / "manifest.json").read_text())["signed"]
    assert (published / signed["chunks"]["index"]).is_file() and (tmp_path / "mirror" / "app" / "chunks").is_dir()
    assert _run(tmp_path, targets=["intel-*"], chunks=True)[1]["changed"] is False

    (tmp_path / "app-2.4.tar.gz").write_bytes(b"other bytes")
    proc = _run(tmp_path)[0]  # the play stops at the refused task
    assert proc.returncode != 0 and "already published with another artifact" in proc.stdout


def test_channel_pointer_is_published_idempotently_and_moved_without_re_signing_the_release(tmp_path):
    subprocess.run([CLI, "keygen", "--out", str(tmp_path / "release")], check=True, capture_output=True)
    (tmp_path / "app-2.4.tar.gz").write_bytes(b"release bytes" * 100)
    proc, _ = _run(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    manifest_before = (tmp_path / "mirror" / "app" / "2.4" / "manifest.json").read_bytes()
    pointer = tmp_path / "mirror" / "app" / "channels" / "stable.json"

    proc, _ = _run(tmp_path, check=True, channel="stable")
    assert proc.returncode == 0 and "changed=2" in proc.stdout and not pointer.exists(), proc.stdout

    proc, second = _run(tmp_path, channel="stable")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert second["changed"] is True and second["reason"] == "channel stable not published yet"
    assert second["channel_pointer"] == str(pointer) and second["channel_expires"]
    assert (tmp_path / "mirror" / "app" / "2.4" / "manifest.json").read_bytes() == manifest_before
    signed = json.loads(pointer.read_text())["signed"]
    assert (signed["name"], signed["channel"], signed["version"]) == ("app", "stable", "2.4")

    proc, third = _run(tmp_path, channel="stable")
    assert third["changed"] is False and third["reason"] == "already published and valid", third

    signed["version"] = "2.3"  # the channel pointed elsewhere (unsigned edit: the module only compares)
    pointer.write_text(json.dumps({"signed": signed, "signatures": []}))
    proc, fourth = _run(tmp_path, channel="stable")
    assert fourth["changed"] is True and fourth["reason"] == "channel stable pointed at 2.3"
    assert json.loads(pointer.read_text())["signed"]["version"] == "2.4"

    proc = _run(tmp_path, channel="st/able")[0]
    assert proc.returncode != 0 and "is not a channel name" in proc.stdout


def test_publish_playbook_with_chunks_publishes_an_uncompressed_delta_release(tmp_path):
    """playbooks/publish.yml -e chunks=true: the demo role packs a plain tar and the manifest module
    publishes it with a chunk index the manifest signs (docs/delta.md)."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    mirror = tmp_path / "mirror"
    extra = {"version": "2.4", "chunks": True, "mirror_dir": str(mirror), "build_dir": str(tmp_path / "build"),
             "signing_key": str(tmp_path / "keys" / "release"), "demo_app_publish_cli": CLI}
    argv = [sys.executable, "-m", "ansible.cli.playbook", "-i", "localhost,", "-c", "local",
            os.path.join(repo, "playbooks", "publish.yml"), "-e", json.dumps(extra)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_COLLECTIONS_PATH=_collections_path(), ANSIBLE_PYTHON_INTERPRETER=sys.executable,
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"), ANSIBLE_NOCOLOR="1")
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    published = mirror / "demo-app" / "2.4"
    signed = json.loads((published / "manifest.json").read_text())["signed"]
    assert signed["file"] == "demo-app-2.4.tar" and (published / signed["chunks"]["index"]).is_file()
    assert any((mirror / "demo-app" / "chunks").rglob("*.zst"))
    verify = subprocess.run([CLI, "verify", str(published / "manifest.json"), "--artifact",
                             str(published / "demo-app-2.4.tar"), "--trusted-key",
                             str(tmp_path / "keys" / "release.pub"), "--name", "demo-app", "--version", "2.4"],
                            capture_output=True, text=True, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
