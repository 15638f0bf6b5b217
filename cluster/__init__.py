"""Where jobs run: connecting to Ray, job submission (Ray Jobs API, KubeRay), the `vljepa` CLI."""
