// DepthFusion GLSL MAT, pixel stage: the RGB panorama, unlit. Texture coordinates come from the
// interpolated direction, so the 0°/360° seam and the poles need no special UVs.
// Edge mode (uMapping.w): 0 keeps rubber sheets, 1 culls them, 2 fades them out (dfEdgeAlpha). The colour
// (sColor, crossfaded from sColorPrev during a frame blend) comes from dfColor.

in DepthFusionVertex {
    vec3 direction;
    float keep;
} iVert;

layout(location = 0) out vec4 fragColor;

void main()
{
    TDCheckDiscard();
    float alpha = dfEdgeAlpha(iVert.keep);
    if (alpha < 0.0)
        discard;
    vec3 color = dfColor(dfImageUV(normalize(iVert.direction)));
    fragColor = TDOutputSwizzle(vec4(color * alpha, alpha));
}
