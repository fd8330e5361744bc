# -*- coding: utf-8 -*-
# Copyright (c) 2026, quorum.rollout contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The one HTTP client of the quorum.rollout agent API, shared by every plugin.

Three small pieces live here:

* ``AgentClient`` speaks the agent's JSON API and raises ``AgentApiError``
  with a message a user can act on.
* ``AgentApiOptions`` reads the shared connection options (documented once in
  ``doc_fragments/agent_api.py``) from a module's ``params`` or a plugin's
  ``get_option`` and resolves the token and environment fallbacks, so that
  modules and the lookup behave the same.
* ``clock`` / ``wait_for`` poll the group status on a monotonic clock until a
  predicate holds, retrying transient errors until the deadline.

Only the standard library is used (urllib, ssl): modules run on targets that
may not have ``requests``. The opener and its TLS context are built once per
client, so polling stays cheap.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import time
import uuid
from urllib.error import HTTPError, URLError
from urllib.request import HTTPRedirectHandler, HTTPSHandler, Request, build_opener

from ansible.module_utils.common.text.converters import to_text

from ansible_collections.quorum.rollout.plugins.module_utils.contract import (
    ACTIONS,
    PAUSED,
    ROLLING,
    ROLLING_BACK,
    TERMINAL,
)

ENV_API_URL = "QUORUM_ROLLOUT_API_URL"
ENV_API_TOKEN = "QUORUM_ROLLOUT_API_TOKEN"

# HTTP statuses worth retrying while waiting: the node is not ready, there is
# no leader yet (election in progress) or a proxy in front of it hiccuped.
TRANSIENT_STATUSES = (502, 503, 504)

_HINTS = {
    400: "the agent rejected the request",
    401: "check api_token / api_token_file",
    403: "check api_token / api_token_file",
    404: "not found",
    409: "conflict with the group's current release",
    503: "the node is not ready or the group has no leader; retry later",
}


class AgentApiError(Exception):
    """An agent API call failed.

    ``status`` is the HTTP status, or ``None`` when no HTTP answer came back
    (connection refused, timeout, TLS error). ``error`` is the agent's own
    sentence and ``detail`` its structured detail (always a dict).
    """

    def __init__(self, status, error, detail=None, url=None, method="GET", transient=None):
        self.status = status
        self._transient = transient
        self.error = error
        if detail is None:
            detail = {}
        elif not isinstance(detail, dict):
            detail = {"value": detail}
        self.detail = detail
        self.url = url
        self.method = method
        super(AgentApiError, self).__init__(self._message())

    @property
    def transient(self):
        """True when trying again later may succeed (no answer, 502/503/504)."""
        if self._transient is not None:
            return self._transient
        return self.status is None or self.status in TRANSIENT_STATUSES

    def _message(self):
        where = "%s %s" % (self.method, self.url) if self.url else "the agent API"
        if self.status is None:
            if self._transient is False:
                return "cannot talk to %s: %s" % (where, self.error)
            return "cannot reach %s: %s (is the agent running, and is api_url right?)" % (where, self.error)
        text = self.error or _HINTS.get(self.status, "HTTP error")
        hint = None
        if self.status in (401, 403):
            hint = _HINTS[self.status]
        elif self.status == 503:
            hint = _HINTS[503]
        elif self.status == 400 and self.detail.get("field"):
            hint = "field: %s" % self.detail["field"]
        elif self.status == 409 and self.detail.get("state"):
            hint = "release state: %s" % self.detail["state"]
        if hint and hint not in text:
            text = "%s (%s)" % (text, hint)
        return "%s from %s: %s" % (self.status, where, text)


class AgentOptionError(ValueError):
    """The shared agent_api options are missing or unusable (raised before any request)."""


class _NoRedirect(HTTPRedirectHandler):
    """Never follow a redirect with the token; report it (as an HTTPError) instead."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class AgentClient(object):
    """Client of one agent's HTTP API (``/v1/...``), bearer-token authenticated."""

    def __init__(self, url, token, ca_path=None, timeout=10, validate_certs=True):
        if not url:
            raise AgentOptionError(
                "api_url is not set: pass api_url or set %s (the agent listens on http://127.0.0.1:7200 by default)"
                % ENV_API_URL
            )
        url = to_text(url).strip()
        if not url.startswith(("http://", "https://")):
            raise AgentOptionError("api_url must start with http:// or https://, got %r" % url)
        self.url = url.rstrip("/")
        self.token = token
        self.ca_path = ca_path
        self.validate_certs = validate_certs
        self.timeout = timeout
        self._opener = self._build_opener()

    def __repr__(self):
        return "AgentClient(%r)" % self.url

    def _build_opener(self):
        handlers = [_NoRedirect()]
        if self.url.startswith("https://"):
            try:
                context = ssl.create_default_context(cafile=self.ca_path)
            except (IOError, OSError, ssl.SSLError) as exc:
                raise AgentOptionError("cannot load ca_path %s: %s" % (self.ca_path, exc))
            if not self.validate_certs:
                # Still TLS, but any certificate (self-signed, another name) is accepted.
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            handlers.append(HTTPSHandler(context=context))
        return build_opener(*handlers)

    # -- API -------------------------------------------------------------------
    def status(self):
        """``GET /v1/status``: this node and its group's replicated state."""
        return self._request("GET", "/v1/status")

    def start_release(self, version, allow_downgrade=False, allow_unreachable=False):
        """``POST /v1/releases``: start rolling ``version`` out to the group.

        Returns ``{"changed": bool, "release": RELEASE|None}`` (see ``submit``).
        """
        body = {"version": to_text(version), "allow_downgrade": bool(allow_downgrade),
                "allow_unreachable": bool(allow_unreachable)}
        return self.submit("/v1/releases", body)

    def action(self, name, release_id=None):
        """``POST /v1/releases/current/<name>`` for name in pause, resume, abort, retry.

        ``release_id`` names the release meant: the agent refuses (409) when the group's latest
        release is another one, so a read-then-act race never acts on the wrong release.
        """
        if name not in ACTIONS:
            raise ValueError("unknown release action %r (expected one of %s)" % (name, ", ".join(ACTIONS)))
        body = {"release": to_text(release_id)} if release_id else {}
        return self.submit("/v1/releases/current/%s" % name, body)

    def add_member(self, member_id, address, api_url):
        """``POST /v1/members``: add a member to the group (it joins, then counts)."""
        return self.submit("/v1/members", {"id": to_text(member_id), "address": to_text(address),
                                           "api_url": to_text(api_url)})

    def remove_member(self, member_id):
        """``DELETE /v1/members/<id>``: remove a member (it need not answer)."""
        return self.submit("/v1/members/%s" % to_text(member_id), {}, method="DELETE")

    def operation(self, op_id):
        """``GET /v1/operations/<id>``: committed, rejected, pending, expired (or 404 unknown)."""
        return self._request("GET", "/v1/operations/%s" % op_id)

    def submit(self, path, body, follow=60, sleep=1.0, now=time.monotonic, pause=time.sleep, method="POST"):
        """POST a command with an operation id of its own and return the agent's answer.

        The id makes the command idempotent, so a POST whose answer was lost (no answer, 502/504,
        or 503 "nothing changed") is sent again with the same id until ``follow`` seconds pass. A
        202 (not committed yet; the agent keeps proposing it) is followed on
        ``GET /v1/operations/<id>`` until the log says ``committed`` (returned with the agent's
        ``changed`` and ``reason``, ``changed`` True when the agent no longer knows, and the release re-read) or ``rejected`` (raised as a 409).
        When it is still unknown at the end, an error says so and names the id: it may commit later.
        """
        body = dict(body, operation_id=uuid.uuid4().hex)
        op_id = body["operation_id"]
        answer, last = None, None
        for dummy in clock(follow, sleep, now=now, pause=pause):
            try:
                if answer is None:
                    answer = self._request(method, path, body)
                    if answer.get("changed") is not None:
                        return answer
                    continue
                doc = self.operation(op_id)
            except AgentApiError as exc:
                if not exc.transient:
                    raise
                last = exc
                continue
            if doc.get("status") == "committed":
                # `changed` is there when the agent applied it since it started; else assume it changed
                return {"changed": doc.get("changed", True),
                        "reason": doc.get("reason") or "committed after a delay", "operation": doc,
                        "release": ((self.status().get("state") or {}).get("release"))}
            if doc.get("status") == "rejected":
                raise AgentApiError(409, doc.get("reason") or "the group refused the command",
                                    {"operation_id": op_id}, url=self.url + path, method=method)
            if doc.get("status") == "expired":
                break
        if answer is None and last is not None:
            raise last
        raise AgentApiError(None, "the command was not committed within %ss (operation %s): the group may have no "
                            "leader or no quorum; it may still commit. Check the group's status before sending it "
                            "again" % (follow, op_id), {"operation_id": op_id}, url=self.url + path, method=method,
                            transient=False)

    def events(self):
        """``GET /v1/events``: the group's bounded transition history, oldest first."""
        return self._request("GET", "/v1/events").get("events", [])

    # -- transport ---------------------------------------------------------------
    def _request(self, method, path, body=None):
        url = self.url + path
        headers = {"Accept": "application/json", "User-Agent": "quorum.rollout"}
        if self.token:
            headers["Authorization"] = "Bearer %s" % self.token
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        request = Request(url, data=data, headers=headers, method=method)
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                raw = response.read()
                status = response.getcode()
        except HTTPError as exc:
            raise self._http_error(exc, method, url)
        except URLError as exc:
            if isinstance(exc.reason, ssl.SSLError):
                # A certificate problem does not go away by waiting.
                raise AgentApiError(None, "TLS error: %s (check ca_path and the agent's certificate; "
                                    "validate_certs=false skips the check)" % exc.reason,
                                    url=url, method=method, transient=False)
            raise AgentApiError(None, to_text(exc.reason), url=url, method=method)
        except (socket.timeout, TimeoutError) as exc:
            raise AgentApiError(None, "timed out after %ss (%s)" % (self.timeout, exc), url=url, method=method)
        except (OSError, ValueError) as exc:
            # ConnectionResetError, RemoteDisconnected (http.client) and the like.
            raise AgentApiError(None, "%s: %s" % (type(exc).__name__, exc), url=url, method=method)
        try:
            return json.loads(to_text(raw, errors="surrogate_or_replace"))
        except ValueError:
            raise AgentApiError(
                status, "answer is not JSON: %r (is api_url the agent's API?)" % raw[:120], url=url, method=method
            )

    @staticmethod
    def _http_error(exc, method, url):
        try:
            raw = exc.read() or b""
        except Exception:  # pylint: disable=broad-except
            raw = b""
        error, detail = None, None
        try:
            payload = json.loads(to_text(raw, errors="surrogate_or_replace"))
        except ValueError:
            payload = None
        if isinstance(payload, dict) and payload.get("error"):
            error, detail = to_text(payload["error"]), payload.get("detail")
        elif 300 <= exc.code < 400:
            error = "unexpected redirect to %s (check api_url)" % exc.headers.get("Location", "?")
        elif exc.code == 401:
            error = "bad API token"
        elif exc.code == 404:
            error = "not found (is api_url the agent's API root, e.g. http://127.0.0.1:7200?)"
        else:
            text = to_text(raw, errors="surrogate_or_replace").strip()
            error = text[:200] if text else to_text(exc.reason)
        return AgentApiError(exc.code, error, detail, url=url, method=method)


class AgentApiOptions(object):
    """Reads the shared agent_api options from a module or a plugin.

    Modules pass ``module.params``; the lookup passes its ``get_option``. The
    rules (token precedence, environment fallbacks, token file reading) are
    therefore written once::

        client = AgentApiOptions.from_module(module).client()
        client = AgentApiOptions.from_plugin(self).client(url=term)
    """

    NAMES = ("api_url", "api_token", "api_token_file", "ca_path", "validate_certs", "timeout")

    def __init__(self, getter, env=None):
        self._getter = getter
        self._env = os.environ if env is None else env

    @classmethod
    def from_module(cls, module):
        return cls(module.params.get)

    @classmethod
    def from_plugin(cls, plugin):
        return cls(plugin.get_option)

    @classmethod
    def from_dict(cls, options, env=None):
        return cls(options.get, env=env)

    def get(self, name):
        if name not in self.NAMES:
            raise KeyError(name)
        return self._getter(name)

    def url(self):
        return self.get("api_url") or self._env.get(ENV_API_URL) or None

    def token(self):
        """The API token: api_token, else the content of api_token_file, else $QUORUM_ROLLOUT_API_TOKEN."""
        token, path = self.get("api_token"), self.get("api_token_file")
        if token and path:
            raise AgentOptionError("api_token and api_token_file are mutually exclusive: set only one")
        if not token and path:
            path = os.path.expanduser(to_text(path))
            try:
                with open(path, "rb") as handle:
                    token = to_text(handle.read(), errors="surrogate_or_strict").strip()
            except (IOError, OSError) as exc:
                raise AgentOptionError("cannot read api_token_file %s: %s" % (path, exc.strerror or exc))
            if not token:
                raise AgentOptionError("api_token_file %s is empty" % path)
        if not token:
            token = self._env.get(ENV_API_TOKEN)
        if not token:
            raise AgentOptionError(
                "no API token: set api_token or api_token_file (the agent's api.token_file), or %s" % ENV_API_TOKEN
            )
        return to_text(token).strip()

    def client(self, url=None):
        """An ``AgentClient`` for ``url`` (default: the api_url option)."""
        timeout, validate_certs = self.get("timeout"), self.get("validate_certs")
        return AgentClient(
            url or self.url(),
            self.token(),
            ca_path=self.get("ca_path"),
            timeout=10 if timeout is None else timeout,
            validate_certs=True if validate_certs is None else validate_certs,
        )


def agent_api_argument_spec():
    """The argument_spec entries of the shared options, for AnsibleModule.

    Keep in sync with ``plugins/doc_fragments/agent_api.py``.
    """
    # Imported here so that controller-side plugins do not pull in AnsibleModule.
    from ansible.module_utils.basic import env_fallback

    return dict(
        api_url=dict(type="str", fallback=(env_fallback, [ENV_API_URL])),
        api_token=dict(type="str", no_log=True),
        api_token_file=dict(type="path"),
        ca_path=dict(type="path"),
        validate_certs=dict(type="bool", default=True),
        timeout=dict(type="float", default=10),
    )


AGENT_API_MUTUALLY_EXCLUSIVE = [("api_token", "api_token_file")]


def clock(timeout, sleep, now=time.monotonic, pause=time.sleep):
    """Yield the seconds elapsed since the first call, on a monotonic clock.

    Yields ``0`` at once, then again after each ``sleep`` seconds, the last
    time when ``timeout`` seconds have passed (the last pause is shortened so
    that a final check happens right at the deadline).
    """
    start = now()
    yield 0.0
    while True:
        remaining = timeout - (now() - start)
        if remaining <= 0:
            return
        pause(min(sleep, remaining))
        yield now() - start


def wait_for(client, predicate, timeout, sleep, now=time.monotonic, pause=time.sleep):
    """Poll ``client.status()`` until ``predicate(status)`` holds or ``timeout`` passes.

    Transient errors (no answer, 502/503/504: the node restarting, a leader
    election) are retried until the deadline; any other ``AgentApiError`` is
    raised at once. Returns ``(ok, last_state)``: ``ok`` tells whether the
    predicate held and ``last_state`` is the last status the agent returned
    (the partial state on timeout). When the agent never answered at all the
    last transient error is raised, since there is no state to return.
    """
    last_state, last_error = None, None
    for dummy in clock(timeout, sleep, now=now, pause=pause):
        try:
            last_state = client.status()
        except AgentApiError as exc:
            if not exc.transient:
                raise
            last_error = exc
            continue
        last_error = None
        if predicate(last_state):
            return True, last_state
    if last_state is None and last_error is not None:
        raise last_error
    return False, last_state


def describe_release(group, release):
    """One line about a release, for messages: 'group g: release 2.4 rolling (batch 2/10)'."""
    if not release:
        return "group %s: no release" % group
    text = "group %s: release %s %s" % (group, release.get("version"), release.get("state"))
    state = release.get("state")
    batches = release.get("batches") or []
    if state in (ROLLING, ROLLING_BACK) and release.get("batch") is not None and batches:
        text += " (batch %s/%s)" % (release["batch"] + 1, len(batches))
    if state == PAUSED and release.get("paused_from"):
        text += " (paused from %s)" % release["paused_from"]
    if state not in TERMINAL and release.get("hold"):
        text += " (%s)" % release["hold"].get("text")
    within = [f.get("host") for f in release.get("failed_within_budget") or []]
    if within:
        text += "; failed within the budget (reverted alone): %s" % ", ".join(within)
    failure = release.get("failure")
    if failure:
        text += ": host %s failed at %s: %s" % (failure.get("host"), failure.get("step"), failure.get("reason"))
    return text
