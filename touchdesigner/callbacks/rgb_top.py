# Script TOP 'rgb' of the DepthFusion component: the newest frame's colour, rows bottom-up.

def onCook(scriptOp):
    parent().ext.DepthFusionExt.CookRgb(scriptOp)
