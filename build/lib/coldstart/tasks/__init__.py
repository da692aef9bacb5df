"""Pure round stages, each with a thin Prefect ``@task`` wrapper (``*_task``)."""
