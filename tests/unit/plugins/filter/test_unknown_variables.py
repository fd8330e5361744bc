"""The unknown_variables filter, loaded the way Ansible loads it (by its FQCN)."""

from __future__ import annotations

from ansible.plugins.loader import filter_loader

KNOWN = ["quorum_rollout_batch_fraction", "quorum_rollout_zone", "quorum_rollout_api_port", "quorum_rollout_api_bind"]


def unknown(names: list[str]) -> list[str]:
    return filter_loader.get("quorum.rollout.unknown_variables").j2_function(names, KNOWN)  # type: ignore[no-any-return]


def test_a_misspelling_names_the_closest_variable() -> None:
    assert unknown(["quorum_rollout_batch_fracton", "quorum_rollout_zone"]) == [
        "quorum_rollout_batch_fracton (did you mean quorum_rollout_batch_fraction?)"]


def test_a_name_close_to_nothing_is_listed_bare_and_known_names_pass() -> None:
    assert unknown(["quorum_rollout_xyz", "quorum_rollout_api_prot"] + KNOWN) == [
        "quorum_rollout_api_prot (did you mean quorum_rollout_api_port?)", "quorum_rollout_xyz"]
    assert unknown(KNOWN) == []
