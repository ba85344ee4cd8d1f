# Parameter Execute DAT of the DepthFusion component: pulses go to the extension.

def onPulse(par):
    parent().ext.DepthFusionExt.OnPulse(par)
