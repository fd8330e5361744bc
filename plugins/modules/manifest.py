#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) 2026, quorum.rollout contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: manifest
short_description: Sign a release artifact and publish it in mirror layout
version_added: 0.1.0
description:
  - Writes C(<mirror_dir>/<name>/<version>/manifest.json) and a copy of the artifact beside it,
    the layout quorum.rollout agents download from.
  - The manifest's signed part (name, version, file, sha256, size, created, expires, targets) is
    signed with one or more Ed25519 keys by the agent's own C(quorum-rollout sign) command, so
    there is exactly one signing implementation.
  - Idempotent. A published version is re-signed only when its manifest expires within
    O(renew_days) or when O(targets) changed. A different artifact under an already
    published version is refused unless O(force=true), because mirrors and caches may
    already hold the first one.
  - With O(channel), it also points that release channel at the version
    (C(<mirror_dir>/<name>/channels/<channel>.json), signed with the same keys), which agents in
    autonomous mode (C(quorum_rollout_channel)) poll. The pointer is re-signed when it names another
    version or expires within O(renew_days).
  - "Run it where the signing keys are, usually the controller (C(delegate_to: localhost))."
author:
  - quorum.rollout maintainers (@quorum-rollout)
options:
  artifact:
    description: The release archive to publish (tar.gz, tar or zip).
    type: path
    required: true
  name:
    description: The artifact name the agents are configured with (C(quorum_rollout_artifact_name)).
    type: str
    required: true
  version:
    description: The release version, for example C(2.4).
    type: str
    required: true
  signing_keys:
    description:
      - Private Ed25519 key files (PEM, mode 0600) made by C(quorum-rollout keygen).
      - Give as many as the agents' C(key_threshold) requires.
    type: list
    elements: path
    required: true
  mirror_dir:
    description: The mirror's document root.
    type: path
    required: true
  targets:
    description: Group patterns the release is for (fnmatch, for example C(intel-*)); C(*) is every group.
    type: list
    elements: str
    default: ["*"]
  expires_days:
    description: Validity of the signature in days.
    type: float
    default: 30
  renew_days:
    description: Re-sign a published manifest that expires within this many days.
    type: float
    default: 7
  channel:
    description:
      - Point this release channel (for example V(stable)) at O(version). 1-64 characters from C(A-Z a-z 0-9 . _ -).
      - Agents configured with the same channel start the release by themselves (autonomous mode); a
        channel pointing at an older version than a group runs starts nothing there.
      - Omit it (or give the empty string) to publish the release without touching any channel.
    type: str
  chunks:
    description:
      - Also publish a chunk index and the chunks (a delta release, C(quorum-rollout sign --chunks)). Agents then
        fetch from the mirror only the chunks that no artifact they hold has, and verify the whole file as before.
      - Chunks go to C(<mirror_dir>/<name>/chunks/), shared by every version; the index beside the manifest.
      - Deltas help an uncompressed artifact (a plain C(.tar)); each chunk is stored zstd-compressed. A
        compressed archive changes throughout when a little of its content changes.
      - Changing it re-signs the published manifest.
    type: bool
    default: false
  force:
    description: Replace a different artifact already published under this version.
    type: bool
    default: false
  cli:
    description: The C(quorum-rollout) command (a name on PATH or a path).
    type: str
    default: quorum-rollout
attributes:
  check_mode:
    support: full
    description: Computes whether the manifest would be written; writes nothing.
  diff_mode:
    support: none
    description: Reports the reason for a change, not a diff of the manifest.
  idempotent:
    support: full
    description: A second run with the same inputs reports no change.
notes:
  - Keep private keys off the agents. Agents only need the public keys (C(quorum_rollout_trusted_keys)).
"""

EXAMPLES = r"""
- name: Publish app 2.4 to the mirror, signed by two release managers' keys
  quorum.rollout.manifest:
    artifact: build/app-2.4.tar.gz
    name: app
    version: "2.4"
    signing_keys:
      - ~/.quorum-rollout/alice.key
      - ~/.quorum-rollout/bob.key
    mirror_dir: /srv/mirror
    targets: ["intel-*", "amd-*"]
  delegate_to: localhost
  run_once: true

- name: Publish app 2.6 as a delta release (agents fetch only the chunks they lack)
  quorum.rollout.manifest:
    artifact: build/app-2.6.tar
    name: app
    version: "2.6"
    signing_keys: [~/.quorum-rollout/alice.key]
    mirror_dir: /srv/mirror
    chunks: true
  delegate_to: localhost
  run_once: true

- name: Publish app 2.5 and point the stable channel at it (agents in autonomous mode roll it out)
  quorum.rollout.manifest:
    artifact: build/app-2.5.tar.gz
    name: app
    version: "2.5"
    signing_keys: [~/.quorum-rollout/alice.key]
    mirror_dir: /srv/mirror
    channel: stable
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
manifest:
  description: Path of the manifest in the mirror.
  returned: always
  type: str
  sample: /srv/mirror/app/2.4/manifest.json
sha256:
  description: sha256 of the artifact.
  returned: always
  type: str
size:
  description: Size of the artifact in bytes.
  returned: always
  type: int
expires:
  description: Expiry of the published manifest (UTC), after this run.
  returned: when the manifest exists after the run (not in check mode when it would be written)
  type: str
  sample: "2026-12-26T07:00:00Z"
channel_pointer:
  description: Path of the channel pointer in the mirror.
  returned: when O(channel) is set
  type: str
  sample: /srv/mirror/app/channels/stable.json
channel_expires:
  description: Expiry of the channel pointer (UTC), after this run.
  returned: when O(channel) is set and the pointer exists after the run (not in check mode when it would be written)
  type: str
reason:
  description: Why the manifest or the channel pointer was (or would be) written, or why nothing changed.
  returned: always
  type: str
"""

import datetime
import json
import os
import re

from ansible.module_utils.basic import AnsibleModule


def _published(path):
    try:
        with open(path) as fh:
            doc = json.load(fh)
        return doc["signed"] if isinstance(doc, dict) and isinstance(doc.get("signed"), dict) else None
    except (OSError, ValueError):
        return None


def _expires(signed):
    try:
        return datetime.datetime.strptime(signed["expires"], "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=datetime.timezone.utc)
    except (KeyError, TypeError, ValueError):
        return None


def _pointer_reason(pointer, name, channel, version, now, renew_days):
    """Why the channel pointer must be (re-)signed, or None when it already names the version."""
    if pointer is None:
        return "channel %s not published yet" % channel
    if pointer.get("name") != name or pointer.get("channel") != channel:
        return "channel %s pointer is for another artifact or channel" % channel
    if pointer.get("version") != version:
        return "channel %s pointed at %s" % (channel, pointer.get("version"))
    expires = _expires(pointer)
    if expires is None or expires - now < datetime.timedelta(days=renew_days):
        return "channel %s pointer expires within renew_days" % channel
    return None


def _copy_matches(module, path, sha256):
    return os.path.isfile(path) and module.sha256(path) == sha256


def main():
    module = AnsibleModule(
        argument_spec=dict(
            artifact=dict(type="path", required=True),
            name=dict(type="str", required=True),
            version=dict(type="str", required=True),
            signing_keys=dict(type="list", elements="path", required=True, no_log=False),
            mirror_dir=dict(type="path", required=True),
            targets=dict(type="list", elements="str", default=["*"]),
            expires_days=dict(type="float", default=30.0),
            renew_days=dict(type="float", default=7.0),
            channel=dict(type="str"),
            chunks=dict(type="bool", default=False),
            force=dict(type="bool", default=False),
            cli=dict(type="str", default="quorum-rollout"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if not os.path.isfile(p["artifact"]):
        module.fail_json(msg="artifact %s does not exist or is not a file" % p["artifact"])
    for key in p["signing_keys"]:
        if not os.path.isfile(key):
            module.fail_json(msg="signing key %s does not exist (create one with 'quorum-rollout keygen --out PREFIX')"
                             % key)
    if p["renew_days"] >= p["expires_days"]:
        module.fail_json(msg="renew_days (%s) must be lower than expires_days (%s)" % (p["renew_days"], p["expires_days"]))
    sha256 = module.sha256(p["artifact"])
    size = os.path.getsize(p["artifact"])
    dest = os.path.join(p["mirror_dir"], p["name"], p["version"])
    manifest_path = os.path.join(dest, "manifest.json")
    result = dict(changed=False, manifest=manifest_path, sha256=sha256, size=size)

    channel = p["channel"] or None  # "" (an unset playbook variable) is no channel
    if channel is not None and (not re.match(r"^[A-Za-z0-9._-]{1,64}$", channel) or channel in (".", "..")):
        module.fail_json(msg="channel %r is not a channel name: 1-64 characters from A-Z a-z 0-9 . _ - "
                         "(for example stable)" % channel, **result)
    pointer_path = os.path.join(p["mirror_dir"], p["name"], "channels", "%s.json" % channel) if channel else None
    if pointer_path:
        result["channel_pointer"] = pointer_path

    signed = _published(manifest_path)
    now = datetime.datetime.now(datetime.timezone.utc)
    if signed is None:
        reason = "not published yet"
    elif signed.get("sha256") != sha256 or signed.get("size") != size:
        if not p["force"]:
            module.fail_json(msg="%s %s is already published with another artifact (sha256 %s); a published "
                             "version must not change: publish a new version, or set force=true if no agent "
                             "or cache can hold the old one" % (p["name"], p["version"], signed.get("sha256")),
                             **result)
        reason = "artifact replaced (force)"
    elif sorted(signed.get("targets") or ["*"]) != sorted(p["targets"]):
        reason = "targets changed"
    elif ("chunks" in signed) != p["chunks"]:
        reason = "chunk index %s" % ("added" if p["chunks"] else "removed")
    elif p["chunks"] and not os.path.isfile(os.path.join(dest, str((signed.get("chunks") or {}).get("index", "")))):
        reason = "chunk index in the mirror is missing"
    elif _expires(signed) is None or _expires(signed) - now < datetime.timedelta(days=p["renew_days"]):
        reason = "signature expires within renew_days"
    elif not _copy_matches(module, os.path.join(dest, str(signed.get("file", ""))), sha256):
        reason = "artifact copy in the mirror is missing or differs"
    else:
        reason = None
        result["expires"] = signed["expires"]
    pointer_reason = None
    if channel:
        pointer = _published(pointer_path)
        pointer_reason = _pointer_reason(pointer, p["name"], channel, p["version"], now, p["renew_days"])
        if pointer_reason is None:
            result["channel_expires"] = pointer["expires"]
    if reason is None and pointer_reason is None:
        result["reason"] = "already published and valid"
        module.exit_json(**result)

    result.update(changed=True, reason="; ".join(r for r in (reason, pointer_reason) if r))
    if module.check_mode:
        module.exit_json(**result)
    cli = module.get_bin_path(p["cli"]) if os.sep not in p["cli"] else p["cli"]
    if not cli or not os.access(cli, os.X_OK):
        module.fail_json(msg="cannot find the '%s' command: install the quorum-rollout agent on this host or "
                         "set cli to its path" % p["cli"], **result)
    if reason is not None:  # the manifest (and the pointer with it)
        argv = [cli, "sign", p["artifact"], "--name", p["name"], "--version", p["version"],
                "--expires-days", str(p["expires_days"]), "--mirror-dir", p["mirror_dir"]]
        for target in p["targets"]:
            argv += ["--target", target]
        if p["chunks"]:
            argv.append("--chunks")
        what = "quorum-rollout sign"
    else:  # the pointer only: the published manifest stays as it is
        argv = [cli, "channel", "publish", "--name", p["name"], "--version", p["version"],
                "--expires-days", str(p["expires_days"]), "--mirror-dir", p["mirror_dir"]]
        what = "quorum-rollout channel publish"
    if channel:
        argv += ["--channel", channel]
    for key in p["signing_keys"]:
        argv += ["--key", key]
    rc, out, err = module.run_command(argv)
    if rc != 0:
        module.fail_json(msg="%s failed (rc %d): %s" % (what, rc, (err or out).strip()), **result)
    result["expires"] = (_published(manifest_path) or {}).get("expires")
    if channel:
        result["channel_expires"] = (_published(pointer_path) or {}).get("expires")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
