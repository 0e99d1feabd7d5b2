"""`make demo`: the original documentation's example, end to end on the local backend.

`foo` is set through appliance_environ (tracked, sent to the workers), `bar` through
os.environ (visible here, never sent). Two input workers print what they see. Then `foo`
changes and a second job is submitted: the first job keeps the value it was created with.
"""

import os
import sys
from pathlib import Path

import cerebras_appliance as app

SCRIPT = str(Path(__file__).with_name("show_env.py"))


def show(job: app.Job) -> bool:
    status = job.wait(timeout=120)
    print(f"\njob {job.name}: {status.phase} (envHash {status.env_hash})")
    for _worker, text in sorted(job.logs().items()):
        for line in text.splitlines():
            if not line.startswith("appliance worker:"):
                print(f"  {line}")
    job.delete()
    return status.phase == "Succeeded"


def main() -> int:
    os.environ.pop("foo", None)
    os.environ.pop("bar", None)

    # --- the original docs' example ------------------------------------------------------
    # Let's start with a clean environment
    assert "foo" not in os.environ and "bar" not in app.environ

    # Import the appliance_environ object
    from cerebras_appliance.environment import appliance_environ

    # Now let's set env variable "foo" through appliance_environ.
    # When the input workers are created, they will see this updated value.
    appliance_environ["foo"] = "1"
    assert appliance_environ["foo"] == "1"  # appliance_environ sees the updated value
    assert os.environ["foo"] == "1"  # os.environ also sees the updated value

    # Now let's set env variable "bar" through os.environ.
    # Since "bar" is set through "os.environ", when the input workers are
    # created, they won't have access to this key.
    os.environ["bar"] = "2"
    assert appliance_environ["bar"] == "2"  # appliance_environ sees the updated value
    # --------------------------------------------------------------------------------------

    print("user process: foo=1 (set through appliance_environ), bar=2 (set through os.environ)")
    first = app.submit(SCRIPT, replicas=2, args=["foo", "bar"], name="demo-first")
    print(f"submitted {first.name} with 2 input workers (snapshot: foo=1)")

    appliance_environ["foo"] = "changed"
    print("user process: foo=changed, after the first job was created")
    second = app.submit(SCRIPT, replicas=2, args=["foo", "bar"], name="demo-second")
    print(f"submitted {second.name} (snapshot: foo=changed)")

    ok = show(first) & show(second)
    print(
        "\nThe first job's workers see foo=1 although foo changed after it was created;"
        "\nthe second job's see foo=changed. No worker sees bar: it was set through os.environ."
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
