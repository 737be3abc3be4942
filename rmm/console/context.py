from rmm.engine.services import kill_switches


def engaged_kill_switches(request):
    """Every console page shows the engaged kill switches the user is concerned by."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    return {"engaged_kill_switches": list(kill_switches.engaged_visible_to(user))}
