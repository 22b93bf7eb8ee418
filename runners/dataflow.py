"""Build pipeline options for a streaming Dataflow job with GPU workers.

``dataflow_gpu_args`` turns a few settings into the standard Beam flags and
checks them against Dataflow's GPU rules before a job is submitted, because
a wrong GPU or machine type otherwise fails only after minutes of worker
startup. The command line prints the flags, one per line::

    python -m pipelines.online_train $(python -m runners.dataflow \\
        --project=my-project --region=us-central1 \\
        --temp_location=gs://my-bucket/tmp --gpu_type=nvidia-l4 \\
        --sdk_container_image=us-docker.pkg.dev/my-project/beam/online-dl:1)

GPU rules, from Google Cloud's "Dataflow support for GPUs" and "Use NVIDIA
L4 GPUs" pages: GPUs need Runner v2, and T4, P4, P100 and V100 attach to N1
machine types (predefined or custom). L4 comes only with G2 machine types.
A100 comes with A2 and H100 with A3 machine types, and each G2, A2 and A3
machine type has a fixed number of GPUs.
"""

import argparse
import re
import sys
from typing import Dict, List, Optional

# GPU type -> allowed counts per worker, for GPUs attached to N1 machines.
_N1_GPU_COUNTS: Dict[str, tuple] = {
    "nvidia-tesla-t4": (1, 2, 4),
    "nvidia-tesla-p4": (1, 2, 4),
    "nvidia-tesla-p100": (1, 2, 4),
    "nvidia-tesla-v100": (1, 2, 4, 8),
}

# GPU type -> {machine type: GPUs that machine type comes with}.
# NOTE: the counts follow Compute Engine's machine type names (the -Ng
# suffix, and G2 sizes); H100 support on Dataflow was not checked.
_ACCELERATOR_OPTIMIZED: Dict[str, Dict[str, int]] = {
    "nvidia-l4": {
        "g2-standard-4": 1,
        "g2-standard-8": 1,
        "g2-standard-12": 1,
        "g2-standard-16": 1,
        "g2-standard-32": 1,
        "g2-standard-24": 2,
        "g2-standard-48": 4,
        "g2-standard-96": 8,
    },
    "nvidia-tesla-a100": {
        "a2-highgpu-1g": 1,
        "a2-highgpu-2g": 2,
        "a2-highgpu-4g": 4,
        "a2-highgpu-8g": 8,
        "a2-megagpu-16g": 16,
    },
    "nvidia-a100-80gb": {
        "a2-ultragpu-1g": 1,
        "a2-ultragpu-2g": 2,
        "a2-ultragpu-4g": 4,
        "a2-ultragpu-8g": 8,
    },
    "nvidia-h100-80gb": {
        "a3-highgpu-8g": 8,
    },
}

GPU_TYPES = sorted([*_N1_GPU_COUNTS, *_ACCELERATOR_OPTIMIZED])

DEFAULT_N1_MACHINE_TYPE = "n1-standard-4"

# Region names such as us-central1, europe-west4, northamerica-northeast1.
_REGION = re.compile(r"^[a-z]+-[a-z]+[0-9]+$")
# Project ids: 6-30 characters, lowercase letters, digits and hyphens,
# starting with a letter and not ending with a hyphen.
_PROJECT = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
# N1 predefined (n1-standard-4) and custom (custom-8-30720, n1-custom-8-30720).
_N1_MACHINE = re.compile(r"^(n1-[a-z]+-[0-9]+|(n1-)?custom-[0-9]+-[0-9]+)$")


def _check_project_region_temp(project, region, temp_location) -> None:
    if not _PROJECT.match(project or ""):
        raise ValueError(
            f"project={project!r} is not a Google Cloud project id; use the "
            "id (6-30 lowercase letters, digits or hyphens), not the name.")
    if not _REGION.match(region or ""):
        raise ValueError(
            f"region={region!r} is not a Dataflow region name; pass one such "
            "as 'us-central1' (a region, not a zone like 'us-central1-a').")
    if not (temp_location or "").startswith("gs://"):
        raise ValueError(
            f"temp_location={temp_location!r} is not a Cloud Storage path; "
            "Dataflow needs one such as 'gs://my-bucket/tmp'.")


def _check_gpu(gpu_type: str, gpu_count: int,
               machine_type: Optional[str]) -> str:
    """Validate the GPU settings and return the machine type to use."""
    if gpu_type not in GPU_TYPES:
        raise ValueError(
            f"gpu_type={gpu_type!r} is not a Dataflow GPU type; use one of "
            f"{', '.join(GPU_TYPES)}.")
    if gpu_count < 1:
        raise ValueError(
            f"gpu_count={gpu_count} must be at least 1; omit gpu_type for a "
            "job without GPUs.")

    if gpu_type in _N1_GPU_COUNTS:
        allowed = _N1_GPU_COUNTS[gpu_type]
        if gpu_count not in allowed:
            raise ValueError(
                f"gpu_count={gpu_count} is not available for {gpu_type}; use "
                f"one of {allowed}.")
        machine_type = machine_type or DEFAULT_N1_MACHINE_TYPE
        if not _N1_MACHINE.match(machine_type):
            raise ValueError(
                f"machine_type={machine_type!r} cannot attach {gpu_type}; use "
                "an N1 machine type such as 'n1-standard-4'.")
        return machine_type

    machines = _ACCELERATOR_OPTIMIZED[gpu_type]
    if machine_type is None:
        matching = [name for name, count in machines.items()
                    if count == gpu_count]
        if not matching:
            raise ValueError(
                f"gpu_count={gpu_count} is not available for {gpu_type}; use "
                f"one of {sorted(set(machines.values()))}.")
        return matching[0]
    if machine_type not in machines:
        raise ValueError(
            f"machine_type={machine_type!r} does not come with {gpu_type}; "
            f"use one of {', '.join(machines)}.")
    if machines[machine_type] != gpu_count:
        raise ValueError(
            f"gpu_count={gpu_count} does not match machine_type="
            f"{machine_type!r}, which has {machines[machine_type]} "
            f"{gpu_type}; set gpu_count={machines[machine_type]}.")
    return machine_type


def dataflow_gpu_args(
        project: str,
        region: str,
        temp_location: str,
        gpu_type: Optional[str] = "nvidia-tesla-t4",
        gpu_count: int = 1,
        machine_type: Optional[str] = None,
        sdk_container_image: Optional[str] = None,
        max_num_workers: Optional[int] = None,
        job_name: Optional[str] = None) -> List[str]:
    """Return pipeline arguments for a streaming Dataflow job on GPU workers.

    ``gpu_type=None`` gives a job without GPUs. Without ``machine_type``, N1
    GPUs get ``n1-standard-4`` and the others the smallest machine type with
    ``gpu_count`` GPUs. ``sdk_container_image`` should be an image built
    from ``runners/Dockerfile``, because Dataflow's default container has no
    PyTorch.

    Raises:
      ValueError: a setting breaks a Dataflow rule; the message names it.
    """
    _check_project_region_temp(project, region, temp_location)
    if max_num_workers is not None and max_num_workers < 1:
        raise ValueError(
            f"max_num_workers={max_num_workers} must be at least 1.")

    args = [
        "--runner=DataflowRunner",
        f"--project={project}",
        f"--region={region}",
        f"--temp_location={temp_location}",
        "--streaming",
        # GPUs and custom containers both need Runner v2.
        "--experiments=use_runner_v2",
    ]
    if gpu_type is not None:
        machine_type = _check_gpu(gpu_type, gpu_count, machine_type)
        args.append(
            "--dataflow_service_options=worker_accelerator="
            f"type:{gpu_type};count:{gpu_count};install-nvidia-driver")
    if machine_type:
        args.append(f"--machine_type={machine_type}")
    if sdk_container_image:
        args.append(f"--sdk_container_image={sdk_container_image}")
    if max_num_workers is not None:
        args.append(f"--max_num_workers={max_num_workers}")
    if job_name:
        args.append(f"--job_name={job_name}")
    return args


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m runners.dataflow",
        description="Print pipeline options for a streaming Dataflow job "
        "with GPU workers.")
    parser.add_argument("--project", required=True,
                        help="Google Cloud project id.")
    parser.add_argument("--region", required=True,
                        help="Dataflow region, such as us-central1.")
    parser.add_argument("--temp_location", required=True,
                        help="gs:// path for temporary files.")
    parser.add_argument("--gpu_type", default="nvidia-tesla-t4",
                        help=f"GPU type, one of {', '.join(GPU_TYPES)}, or "
                        "'none' for CPU workers (default: %(default)s).")
    parser.add_argument("--gpu_count", type=int, default=1,
                        help="GPUs per worker (default: %(default)s).")
    parser.add_argument("--machine_type", default=None,
                        help="Worker machine type (default: chosen from the "
                        "GPU type and count).")
    parser.add_argument("--sdk_container_image", default=None,
                        help="Image built from runners/Dockerfile.")
    parser.add_argument("--max_num_workers", type=int, default=None,
                        help="Upper bound for autoscaling, in workers.")
    parser.add_argument("--job_name", default=None, help="Dataflow job name.")
    args = parser.parse_args(argv)

    gpu_type = None if args.gpu_type == "none" else args.gpu_type
    try:
        options = dataflow_gpu_args(
            project=args.project, region=args.region,
            temp_location=args.temp_location, gpu_type=gpu_type,
            gpu_count=args.gpu_count, machine_type=args.machine_type,
            sdk_container_image=args.sdk_container_image,
            max_num_workers=args.max_num_workers, job_name=args.job_name)
    except ValueError as error:
        parser.error(str(error))
    # One flag per line and unquoted, so "$(python -m runners.dataflow ...)"
    # splits into flags; no flag value here contains whitespace.
    print("\n".join(options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
