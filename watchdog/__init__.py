"""odoo-watchdog: safe blue-green and canary rollouts of Odoo behind HAProxy, nginx or Traefik."""

__version__ = "0.1.0"
__all__ = ["__version__"]
