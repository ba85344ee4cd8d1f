# Parameter Execute DAT of the DepthFusion component: pulses and changed values go to the extension.

def onPulse(par):
    parent().ext.DepthFusionExt.OnPulse(par)


def onValueChange(par, prev):
    parent().ext.DepthFusionExt.OnValueChange(par)
