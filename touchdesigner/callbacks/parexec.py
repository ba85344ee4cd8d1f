# Parameter Execute DAT of the DepthFusion component: pulses and changed values go to the extension.
# onValueChange takes both documented signatures: (par, val, prev) and (par, prev).

def onPulse(par):
    parent().ext.DepthFusionExt.OnPulse(par)


def onValueChange(par, *val_prev):
    parent().ext.DepthFusionExt.OnValueChange(par)
