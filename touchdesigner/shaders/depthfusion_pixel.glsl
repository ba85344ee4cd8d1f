// DepthFusion GLSL MAT, pixel stage: the RGB panorama, unlit. Texture coordinates come from the
// interpolated direction, so the 0°/360° seam and the poles need no special UVs.
// Edge mode (uMapping.w): 0 keeps rubber sheets, 1 culls them, 2 fades them out (dfEdgeAlpha).

uniform sampler2D sColor;

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
    vec2 uv = dfImageUV(normalize(iVert.direction));
    vec3 color = textureLod(sColor, vec2(uv.x, 1.0 - uv.y), 0.0).rgb;  // row 0 is the bottom in TD
    fragColor = TDOutputSwizzle(vec4(color * alpha, alpha));
}
