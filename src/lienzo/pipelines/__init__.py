"""Pipeline steps and compositions; the object returned by lienzo.load."""
