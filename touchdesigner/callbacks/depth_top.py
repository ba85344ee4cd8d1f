# Script TOP 'depth' of the DepthFusion component: the newest frame's 16-bit depth, rows bottom-up.

def onCook(scriptOp):
    parent().ext.DepthFusionExt.CookDepth(scriptOp)
