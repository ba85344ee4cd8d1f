# Script TOP 'depth_prev' of the DepthFusion component: the previous frame's 16-bit depth, which a new frame
# crossfades from over Blend Time (copied once per new frame, only when Blend Time is above 0), rows bottom-up.

def onCook(scriptOp):
    parent().ext.DepthFusionExt.CookDepthPrev(scriptOp)
