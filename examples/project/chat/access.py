"""Who may read a run: the logged-in user who started it (Django's own auth and session)."""


async def may_read(request, run_id: str) -> bool:
    user = await request.auser()
    if not user.is_authenticated:
        return False
    runs = await request.session.aget("runs", [])
    return run_id in runs
