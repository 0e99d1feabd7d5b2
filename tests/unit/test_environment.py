"""appliance_environ: the contract of the original docs, and os.environ's interface."""

from __future__ import annotations

import os
import pickle
import threading
from collections.abc import MutableMapping

import pytest

import cerebras_appliance
from cerebras_appliance.environment import ApplianceEnviron, appliance_environ


def test_original_docs_example_verbatim() -> None:
    import cerebras_appliance as app

    os.environ.pop("foo", None)
    os.environ.pop("bar", None)
    # --- the original documentation's example, as printed -----------------------------
    # Let's start with a clean environment
    assert "foo" not in os.environ and "bar" not in app.environ

    # Import the appliance_environ object
    from cerebras_appliance.environment import appliance_environ

    # Now let's set env variable "foo" through appliance_environ.
    # When the input workers are created, they will see this updated
    # value.
    appliance_environ["foo"] = "1"
    assert appliance_environ["foo"] == "1"  # appliance_environ sees the updated value
    assert os.environ["foo"] == "1"  # os.environ also sees the updated value

    # Now let's set env variable "bar" through os.environ.
    # Since "bar" is set through "os.environ", when the input workers are
    # created, they won't have access to this key.
    os.environ["bar"] = "2"
    assert appliance_environ["bar"] == "2"  # appliance_environ sees the updated value
    # --- end of the example ------------------------------------------------------------
    assert appliance_environ.snapshot() == [("foo", "1")]


def test_module_alias_and_types() -> None:
    assert cerebras_appliance.environ is appliance_environ
    assert cerebras_appliance.appliance_environ is appliance_environ
    assert isinstance(appliance_environ, MutableMapping)
    assert isinstance(appliance_environ, type(os.environ))  # drop-in where os._Environ is expected


def test_set_writes_process_environment_and_c_getenv() -> None:
    import ctypes

    appliance_environ["AE_C_LEVEL"] = "visible"
    libc = ctypes.CDLL(None)
    libc.getenv.restype = ctypes.c_char_p
    assert libc.getenv(b"AE_C_LEVEL") == b"visible"
    assert os.getenv("AE_C_LEVEL") == "visible"


@pytest.mark.parametrize(
    ("key", "value", "error"),
    [
        (1, "v", TypeError),
        ("K", 1, TypeError),
        ("K", None, TypeError),
        (b"K", "v", TypeError),
        ("A=B", "v", ValueError),
        ("", "v", ValueError),
        ("NUL\x00", "v", ValueError),
        ("K", "v\x00", ValueError),
    ],
)
def test_bad_keys_and_values_are_refused_like_os_environ(
    key: object, value: object, error: type[Exception]
) -> None:
    with pytest.raises((error, OSError)):  # os.environ: OSError for an empty name
        os.environ[key] = value  # type: ignore[index,assignment]
    with pytest.raises(error):
        appliance_environ[key] = value  # type: ignore[index,assignment]
    assert appliance_environ.tracked_names() == []
    assert len(appliance_environ) == 0


def test_reads_see_untracked_variables_but_views_cover_tracked_only() -> None:
    os.environ["UNTRACKED"] = "u"
    appliance_environ["TRACKED"] = "t"
    assert appliance_environ["UNTRACKED"] == "u"
    assert appliance_environ.get("UNTRACKED") == "u"
    assert "UNTRACKED" in appliance_environ
    assert list(appliance_environ) == ["TRACKED"]
    assert len(appliance_environ) == 1
    assert list(appliance_environ.keys()) == ["TRACKED"]
    assert list(appliance_environ.items()) == [("TRACKED", "t")]
    assert list(appliance_environ.values()) == ["t"]
    assert appliance_environ.copy() == {"TRACKED": "t"}
    assert type(appliance_environ.copy()) is dict
    assert repr(appliance_environ) == "appliance_environ({'TRACKED': 't'})"
    assert dict(appliance_environ) == {"TRACKED": "t"}
    assert appliance_environ | {"X": "1"} == {"TRACKED": "t", "X": "1"}
    assert {"X": "1"} | appliance_environ == {"X": "1", "TRACKED": "t"}


def test_tracked_variable_deleted_through_os_environ_breaks_nothing() -> None:
    appliance_environ["GONE"] = "1"
    appliance_environ["KEPT"] = "2"
    del os.environ["GONE"]
    assert list(appliance_environ) == ["KEPT"]
    assert len(appliance_environ) == 1
    assert dict(appliance_environ.items()) == {"KEPT": "2"}
    assert list(appliance_environ.values()) == ["2"]
    assert appliance_environ.copy() == {"KEPT": "2"}
    assert "GONE" not in repr(appliance_environ)
    assert appliance_environ.snapshot() == [("KEPT", "2")]  # not sent while absent
    os.environ["GONE"] = "back"  # still tracked: sent again once set
    assert appliance_environ.snapshot() == [("GONE", "back"), ("KEPT", "2")]


def test_snapshot_keeps_first_insertion_order_and_latest_value() -> None:
    appliance_environ["B"] = "1"
    appliance_environ["A"] = "1"
    appliance_environ["B"] = "2"
    assert appliance_environ.snapshot() == [("B", "2"), ("A", "1")]


def test_del_pop_popitem_untrack_and_raise_like_os_environ() -> None:
    appliance_environ["X"] = "1"
    del appliance_environ["X"]
    assert "X" not in os.environ and not appliance_environ.is_tracked("X")
    with pytest.raises(KeyError):
        del appliance_environ["X"]
    with pytest.raises(KeyError):
        del os.environ["X"]

    appliance_environ["Y"] = "2"
    assert appliance_environ.pop("Y") == "2"
    assert appliance_environ.pop("Y", "default") == "default"
    with pytest.raises(KeyError):
        appliance_environ.pop("Y")
    assert not appliance_environ.is_tracked("Y")

    # deleting an untracked variable through appliance_environ works as on os.environ
    os.environ["Z"] = "3"
    del appliance_environ["Z"]
    assert "Z" not in os.environ

    appliance_environ["P"] = "4"
    assert appliance_environ.popitem() == ("P", "4")
    assert "P" not in os.environ
    os.environ["UNTRACKED"] = "u"
    with pytest.raises(KeyError):
        appliance_environ.popitem()  # never pops an untracked variable
    assert os.environ["UNTRACKED"] == "u"


def test_popitem_skips_tracked_variables_deleted_elsewhere() -> None:
    appliance_environ["A"] = "1"
    appliance_environ["B"] = "2"
    del os.environ["A"]
    assert appliance_environ.popitem() == ("B", "2")
    with pytest.raises(KeyError):
        appliance_environ.popitem()


def test_clear_removes_only_tracked_variables() -> None:
    os.environ["KEEP_ME"] = "k"
    appliance_environ["DROP_1"] = "1"
    appliance_environ["DROP_2"] = "2"
    del os.environ["DROP_2"]
    appliance_environ.clear()
    assert os.environ["KEEP_ME"] == "k"
    assert "DROP_1" not in os.environ
    assert appliance_environ.tracked_names() == []
    assert len(appliance_environ) == 0


def test_update_setdefault_and_ior_track() -> None:
    appliance_environ.update({"U1": "1"}, U2="2")
    appliance_environ.update([("U3", "3")])
    env = appliance_environ
    env |= {"U4": "4"}
    assert env is appliance_environ
    assert appliance_environ.snapshot() == [("U1", "1"), ("U2", "2"), ("U3", "3"), ("U4", "4")]

    assert appliance_environ.setdefault("S1", "new") == "new"
    assert appliance_environ.is_tracked("S1")
    os.environ["S2"] = "existing"
    assert appliance_environ.setdefault("S2", "new") == "existing"  # as os.environ: no write
    assert not appliance_environ.is_tracked("S2")


def test_failed_update_keeps_what_was_set_before_the_bad_item() -> None:
    with pytest.raises(ValueError):
        appliance_environ.update([("OK", "1"), ("BAD=", "2")])
    assert appliance_environ.snapshot() == [("OK", "1")]


def test_separate_instances_share_the_environment_not_the_tracking() -> None:
    other = ApplianceEnviron()
    other["SHARED"] = "1"
    assert os.environ["SHARED"] == "1"
    assert appliance_environ["SHARED"] == "1"
    assert not appliance_environ.is_tracked("SHARED")


def test_pickles_as_the_singleton() -> None:
    assert pickle.loads(pickle.dumps(appliance_environ)) is appliance_environ


def test_concurrent_threads_never_leave_set_variables_untracked() -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def hammer(worker: int) -> None:
        try:
            barrier.wait()
            for i in range(2000):
                key = f"T{(worker + i) % 16}"
                if i % 3 == 2:
                    appliance_environ.pop(key, None)
                else:
                    appliance_environ[key] = str(i)
                list(appliance_environ.items())
                len(appliance_environ)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for i in range(16):
        key = f"T{i}"
        # invariant: a variable set through appliance_environ is tracked (nothing else set
        # them); a tracked name may outlive its variable only after a racing delete
        if key in os.environ:
            assert appliance_environ.is_tracked(key), key
    assert set(appliance_environ) == {
        k for k in os.environ if k.startswith("T") and k[1:].isdigit()
    }
