"""appliance_environ: the original docs' contract, os.environ's interface, and tracking rules."""

from __future__ import annotations

import ctypes
import json
import os
import pickle
import subprocess
import sys
import textwrap
import threading
from collections.abc import MutableMapping
from pathlib import Path

import pytest

import cerebras_appliance
from cerebras_appliance.contract.api import InvalidJobError
from cerebras_appliance.environment import ApplianceEnviron, appliance_environ
from cerebras_appliance.jobs import build_job, submit

CLIENT = str(Path(cerebras_appliance.__file__).resolve().parent.parent)


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
    assert appliance_environ.tracked() == {"foo": "1"}


def test_module_alias_and_types() -> None:
    assert cerebras_appliance.environ is appliance_environ
    assert cerebras_appliance.appliance_environ is appliance_environ
    assert isinstance(appliance_environ, MutableMapping)
    assert isinstance(appliance_environ, type(os.environ))  # drop-in where os._Environ is expected


# -- the reproduction: every read is the whole environment ---------------------------


def test_in_iteration_len_views_and_copies_are_the_whole_environment() -> None:
    os.environ["UNTR"] = "u"
    appliance_environ["TR"] = "t"
    assert "UNTR" in appliance_environ
    assert "UNTR" in list(appliance_environ)
    assert list(appliance_environ) == list(os.environ)
    assert len(appliance_environ) == len(os.environ) == len(list(appliance_environ))
    assert list(appliance_environ.keys()) == list(os.environ.keys())
    assert list(appliance_environ.items()) == list(os.environ.items())
    assert list(appliance_environ.values()) == list(os.environ.values())
    assert ("UNTR", "u") in appliance_environ.items()
    for copy in (dict(appliance_environ), {**appliance_environ}, appliance_environ.copy()):
        assert type(copy) is dict
        assert copy == dict(os.environ)
        assert list(copy) == list(os.environ)
    assert appliance_environ == os.environ
    assert not appliance_environ != os.environ  # noqa: SIM202 - the operator itself is tested
    assert appliance_environ | {"X": "1"} == os.environ | {"X": "1"}
    assert {"X": "1"} | appliance_environ == {"X": "1"} | os.environ
    assert repr(appliance_environ) == repr(os.environ)
    assert str(appliance_environ) == str(os.environ)
    assert appliance_environ.tracked() == {"TR": "t"}  # only this is sent


def test_subprocess_env_gets_the_whole_environment() -> None:
    os.environ["UNTR"] = "u"
    appliance_environ["TR"] = "t"
    code = "import json, os; print(json.dumps(dict(os.environ)))"
    out = subprocess.run(
        [sys.executable, "-c", code], env=appliance_environ, capture_output=True, check=True
    ).stdout
    child = json.loads(out)
    assert child["UNTR"] == "u" and child["TR"] == "t"
    for name in ("PATH", "HOME"):
        if name in os.environ:
            assert child[name] == os.environ[name]


def test_set_writes_process_environment_and_c_getenv() -> None:
    appliance_environ["AE_C_LEVEL"] = "visible"
    libc = ctypes.CDLL(None)
    libc.getenv.restype = ctypes.c_char_p
    assert libc.getenv(b"AE_C_LEVEL") == b"visible"
    assert os.getenv("AE_C_LEVEL") == "visible"
    del appliance_environ["AE_C_LEVEL"]
    assert libc.getenv(b"AE_C_LEVEL") is None


# -- bad names and values: os.environ's exception, before anything changes ------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (1, "v"),
        ("K", 1),
        ("K", None),
        (b"K", "v"),
        ("K", b"v"),
        ("A=B", "v"),
        ("=A", "v"),
        ("", "v"),
        ("NUL\x00", "v"),
        ("K", "v\x00"),
        ("K", "\ud800"),  # a lone surrogate: os.environ cannot encode it either
    ],
)
def test_bad_keys_and_values_raise_what_os_environ_raises(key: object, value: object) -> None:
    before = dict(os.environ)
    try:
        os.environ[key] = value  # type: ignore[index,assignment]
    except Exception as exc:
        expected: type[Exception] = type(exc)
    else:  # pragma: no cover
        pytest.fail("os.environ accepted it")
    assert dict(os.environ) == before
    with pytest.raises(expected) as got:
        appliance_environ[key] = value  # type: ignore[index,assignment]
    assert type(got.value) is expected
    assert isinstance(got.value, TypeError | ValueError | OSError)
    assert dict(os.environ) == before
    assert appliance_environ.tracked_names() == []


def test_bad_key_refused_by_the_reads_and_removals_like_os_environ() -> None:
    for operation in (
        lambda env: env[1],
        lambda env: 1 in env,
        lambda env: env.get(b"K"),
        lambda env: env.pop(1),
        lambda env: env.setdefault(1, "v"),
        lambda env: env.__delitem__(1),
    ):
        with pytest.raises(TypeError):
            operation(os.environ)
        with pytest.raises(TypeError):
            operation(appliance_environ)
    assert appliance_environ.tracked_names() == []


# -- tracking ------------------------------------------------------------------------------


def test_tracked_is_a_new_dict_in_first_set_order_with_latest_values() -> None:
    appliance_environ["B"] = "1"
    appliance_environ["A"] = "1"
    appliance_environ["B"] = "2"
    tracked = appliance_environ.tracked()
    assert type(tracked) is dict and list(tracked.items()) == [("B", "2"), ("A", "1")]
    tracked["C"] = "x"  # a copy: changing it changes nothing
    assert appliance_environ.tracked() == {"B": "2", "A": "1"}
    assert appliance_environ.snapshot() == [("B", "2"), ("A", "1")]


def test_variables_set_through_os_environ_are_not_tracked() -> None:
    os.environ["PLAIN"] = "p"
    assert not appliance_environ.is_tracked("PLAIN")
    assert "PLAIN" not in appliance_environ.tracked()
    appliance_environ["PLAIN"] = "q"  # set through appliance_environ now: tracked
    assert appliance_environ.tracked() == {"PLAIN": "q"}


def test_tracked_variable_deleted_through_os_environ_is_not_sent_until_set_again() -> None:
    appliance_environ["GONE"] = "1"
    appliance_environ["KEPT"] = "2"
    del os.environ["GONE"]
    assert appliance_environ.tracked() == {"KEPT": "2"}  # not sent while absent
    assert "GONE" not in appliance_environ and appliance_environ.is_tracked("GONE")
    os.environ["GONE"] = "back"  # still tracked, in its first place
    assert list(appliance_environ.tracked().items()) == [("GONE", "back"), ("KEPT", "2")]


def test_update_and_ior_track_what_they_set() -> None:
    appliance_environ.update({"U1": "1"}, U2="2")
    appliance_environ.update([("U3", "3")])

    class KeysOnly:  # update() also takes any object with keys() and []
        def keys(self) -> list[str]:
            return ["U4"]

        def __getitem__(self, key: str) -> str:
            return "4"

    appliance_environ.update(KeysOnly())  # type: ignore[call-overload]
    env = appliance_environ
    env |= {"U5": "5"}
    assert env is appliance_environ
    env |= [("U6", "6")]  # type: ignore[arg-type]  # os.environ accepts pairs too
    assert list(appliance_environ.tracked()) == ["U1", "U2", "U3", "U4", "U5", "U6"]


def test_failed_update_stops_where_os_environ_stops() -> None:
    with pytest.raises(ValueError):
        os.environ.update([("OS_OK", "1"), ("BAD=", "2"), ("OS_AFTER", "3")])
    assert "OS_OK" in os.environ and "OS_AFTER" not in os.environ
    with pytest.raises(ValueError):
        appliance_environ.update([("OK", "1"), ("BAD=", "2"), ("AFTER", "3")])
    assert appliance_environ.tracked() == {"OK": "1"}
    assert "AFTER" not in os.environ


def test_setdefault_tracks_whether_or_not_the_variable_was_set() -> None:
    assert appliance_environ.setdefault("S1", "new") == "new"
    assert appliance_environ.is_tracked("S1")
    os.environ["S2"] = "existing"
    assert appliance_environ.setdefault("S2", "new") == "existing"  # as os.environ: no write
    assert os.environ["S2"] == "existing"
    assert appliance_environ.tracked() == {"S1": "new", "S2": "existing"}
    # an existing variable: os.environ does not look at the value, neither does this
    assert appliance_environ.setdefault("S2", 1) == "existing"  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        appliance_environ.setdefault("S3", 1)  # type: ignore[arg-type]
    assert not appliance_environ.is_tracked("S3")


def test_del_and_pop_untrack_and_raise_like_os_environ() -> None:
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

    # removing a tracked name whose variable was deleted elsewhere untracks it too
    appliance_environ["Z"] = "3"
    del os.environ["Z"]
    assert appliance_environ.pop("Z", None) is None
    assert not appliance_environ.is_tracked("Z")
    os.environ["Z"] = "again"
    assert "Z" not in appliance_environ.tracked()

    os.environ["UNTRACKED"] = "u"  # untracked variables are removed as on os.environ
    del appliance_environ["UNTRACKED"]
    assert "UNTRACKED" not in os.environ


def test_popitem_pops_the_first_variable_like_os_environ() -> None:
    first = next(iter(os.environ))
    appliance_environ[first] = os.environ[first]  # tracked now
    value = os.environ[first]
    assert appliance_environ.popitem() == (first, value)
    assert first not in os.environ and not appliance_environ.is_tracked(first)
    untracked_first = next(iter(os.environ))
    assert not appliance_environ.is_tracked(untracked_first)
    assert appliance_environ.popitem()[0] == untracked_first  # tracked or not
    os.environ.clear()
    with pytest.raises(KeyError):
        appliance_environ.popitem()


def test_clear_empties_the_environment_and_the_tracked_set() -> None:
    os.environ["KEEP_ME_NOT"] = "k"
    appliance_environ["DROP_1"] = "1"
    appliance_environ["DROP_2"] = "2"
    del os.environ["DROP_2"]  # a tracked name without its variable
    appliance_environ.clear()
    assert dict(os.environ) == {}
    libc = ctypes.CDLL(None)
    libc.getenv.restype = ctypes.c_char_p
    assert libc.getenv(b"DROP_1") is None and libc.getenv(b"KEEP_ME_NOT") is None
    assert appliance_environ.tracked_names() == []
    os.environ["DROP_2"] = "back"
    assert appliance_environ.tracked() == {}


def test_separate_instances_share_the_environment_not_the_tracking() -> None:
    other = ApplianceEnviron()
    other["SHARED"] = "1"
    assert os.environ["SHARED"] == "1"
    assert appliance_environ["SHARED"] == "1"
    assert not appliance_environ.is_tracked("SHARED")
    assert other.tracked() == {"SHARED": "1"}


def test_pickles_as_the_singleton() -> None:
    assert pickle.loads(pickle.dumps(appliance_environ)) is appliance_environ
    with pytest.raises(TypeError):
        pickle.dumps(ApplianceEnviron())


# -- what submit() sends ---------------------------------------------------------------------


def test_submit_snapshots_tracked_and_refuses_values_that_are_not_utf8(tmp_path: Path) -> None:
    appliance_environ["GOOD"] = "fine"
    appliance_environ["FROM_SHELL"] = "caf\udce9"  # b"caf\xe9" (latin-1) via surrogateescape
    assert os.environ["FROM_SHELL"] == "caf\udce9"  # os.environ itself accepts it
    os.environ["UNTRACKED_BAD"] = "\udcff"  # not sent, so it does not matter
    with pytest.raises(InvalidJobError) as raised:
        submit("loader.py", workdir=tmp_path)
    assert raised.value.errors == [
        "env 'FROM_SHELL': the value is not valid UTF-8 (position 3 holds the undecodable "
        "byte 0xe9, kept by surrogateescape); only UTF-8 text can be sent to the workers"
    ]
    with pytest.raises(InvalidJobError, match="'FROM_SHELL'"):  # also marked sensitive
        submit("loader.py", sensitive=["FROM_SHELL"], workdir=tmp_path)


def test_build_job_names_every_variable_that_is_not_utf8() -> None:
    with pytest.raises(InvalidJobError) as raised:
        build_job("x.py", 1, [("N\udcff", "v"), ("OK", "1"), ("V", "\ud800")])
    assert len(raised.value.errors) == 2
    assert raised.value.errors[0].startswith("env 'N\\udcff': the name is not valid UTF-8")
    assert raised.value.errors[1].startswith(
        "env 'V': the value is not valid UTF-8 (position 0 holds the lone surrogate '\\ud800')"
    )
    str(raised.value).encode("ascii")  # the message itself prints anywhere


# -- processes ------------------------------------------------------------------------------


def _child_status(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_fork_child_has_the_tracked_set_and_a_working_lock() -> None:
    appliance_environ["FORKED"] = "1"
    os.environ["FORK_PLAIN"] = "2"
    with appliance_environ._lock:  # held by the forking thread at the moment of the fork
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                ok = appliance_environ.tracked() == {"FORKED": "1"}
                done = threading.Event()

                def other_thread() -> None:  # blocks forever if the child's lock were held
                    appliance_environ.pop("FORKED")
                    appliance_environ.clear()
                    done.set()

                thread = threading.Thread(target=other_thread, daemon=True)
                thread.start()
                thread.join(timeout=30)
                code = 0 if ok and done.is_set() and len(appliance_environ) == 0 else 1
            finally:
                os._exit(code)
    assert _child_status(pid) == 0
    assert appliance_environ._lock.acquire(blocking=False)  # released in the parent too
    appliance_environ._lock.release()
    assert appliance_environ.tracked() == {"FORKED": "1"}  # the child's clear stayed there


def test_fork_waits_for_a_compound_operation_in_another_thread() -> None:
    appliance_environ["A"] = "1"
    holding = threading.Event()
    release = threading.Event()

    def compound() -> None:
        with appliance_environ._lock:
            holding.set()
            release.wait(timeout=30)
            appliance_environ.pop("A")

    thread = threading.Thread(target=compound)
    thread.start()
    assert holding.wait(timeout=30)
    result: list[int] = []

    def fork() -> None:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            os._exit(0 if "A" not in appliance_environ.tracked() else 1)
        result.append(_child_status(pid))

    forker = threading.Thread(target=fork)
    forker.start()
    release.set()
    thread.join(timeout=30)
    forker.join(timeout=30)
    assert result == [0]  # the child saw the pop completed, never half of it


SPAWN_SCRIPT = """
import json, multiprocessing, os, subprocess, sys
from cerebras_appliance.environment import appliance_environ

def report(queue):
    queue.put({
        "value": os.environ.get("SENT"),
        "tracked": appliance_environ.tracked(),
        "is_tracked": appliance_environ.is_tracked("SENT"),
    })

if __name__ == "__main__":
    appliance_environ["SENT"] = "yes"
    results = {}
    for method in ("spawn", "forkserver", "fork"):
        context = multiprocessing.get_context(method)
        queue = context.Queue()
        process = context.Process(target=report, args=(queue,))
        process.start()
        results[method] = queue.get(timeout=60)
        process.join()
    code = "import json, os; from cerebras_appliance import appliance_environ as e; " \\
        "print(json.dumps([os.environ.get('SENT'), e.tracked()]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout
    results["exec"] = json.loads(out)
    print(json.dumps(results))
"""


def test_spawn_forkserver_and_exec_children_see_the_variables_but_track_nothing(
    tmp_path: Path,
) -> None:
    script = tmp_path / "children.py"
    script.write_text(textwrap.dedent(SPAWN_SCRIPT))
    env = dict(os.environ, PYTHONPATH=CLIENT)
    out = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, check=True, timeout=120
    ).stdout
    results = json.loads(out)
    fresh = {"value": "yes", "tracked": {}, "is_tracked": False}
    assert results["spawn"] == fresh
    assert results["forkserver"] == fresh
    assert results["fork"] == {"value": "yes", "tracked": {"SENT": "yes"}, "is_tracked": True}
    assert results["exec"] == ["yes", {}]


# -- threads --------------------------------------------------------------------------------


def test_concurrent_threads_never_leave_set_variables_untracked() -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def hammer(worker: int) -> None:
        try:
            barrier.wait()
            for i in range(2000):
                key = f"T{(worker + i) % 16}"
                step = i % 6
                if step == 2:
                    appliance_environ.pop(key, None)
                elif step == 4:
                    appliance_environ.setdefault(key, "d")
                elif step == 5 and worker == 0 and i % 300 == 5:
                    appliance_environ.clear()
                else:
                    appliance_environ[key] = str(i)
                appliance_environ.tracked()
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
        # a variable set through appliance_environ is tracked (nothing else set them); a
        # tracked name may outlive its variable only after a racing removal
        if key in os.environ:
            assert appliance_environ.is_tracked(key), key
    assert set(appliance_environ.tracked()) == {
        k for k in os.environ if k.startswith("T") and k[1:].isdigit()
    }
